"""One error tree for the whole project.

::

    VictoriaError
    ├── ConfigError(ValueError)            a setting is missing or invalid; names the variable
    ├── BrokerError                        NATS or JetStream trouble
    │   ├── BrokerUnavailable(ConnectionError)   not connected; a retry later can help
    │   ├── BrokerRefused                  NATS refused this process's credentials
    │   ├── EmbeddedServerError            the embedded nats-server would not start
    │   ├── FencingUnsupported             the server is older than 2.11 and cannot fence appends
    │   ├── StreamMissing                  a stream is missing (or wrong) and this NATS user may
    │   │                                  not create it: only `supervisor` may
    │   └── ReplicasUnavailable            fewer servers than VICTORIA_REPLICAS asks for
    ├── LLMError                           a model call did not give an answer
    │   ├── LLMUnavailable(ConnectionError)      the model server refused or is unreachable
    │   ├── LLMTimeout(TimeoutError)       the call passed its deadline
    │   ├── LLMHTTPError                   the model server answered with an HTTP error status
    │   │   └── LLMToolsRefused            ... saying it (or the model) does not take tools
    │   ├── LLMProtocolError               the answer was not in the protocol's shape
    │   ├── LLMContextError                the request does not fit the model's context window
    │   └── ImageMissing                   an image of the request is no longer stored
    ├── ToolError                          a tool call failed (bad path, outside the workspace, ...)
    │   └── OutsideWorkspace(PermissionError)
    ├── TaskAborted                        a task fails for good: its model call failed in a way
    │                                      that asking again cannot mend (timeout, HTTP error, ...)
    └── FenceError                         an attempt's append to its task's history was refused
        ├── TaskLost                       another attempt holds the task now: stop, write nothing
        └── CancelRequested                a cancel request was stored: end the task cancelled

Model errors say what went wrong (``kind``); what to do about it is the workflow's rule: an
unreachable model server is waited for, anything else fails the task (``actors/agent/workflow.py``).
"""

from __future__ import annotations


class VictoriaError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(VictoriaError, ValueError):
    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class BrokerError(VictoriaError):
    pass


class BrokerUnavailable(BrokerError, ConnectionError):
    pass


class BrokerRefused(BrokerError):
    pass


class EmbeddedServerError(BrokerError):
    pass


class FencingUnsupported(BrokerError):
    def __init__(self, url: str, version: str) -> None:
        super().__init__(
            f"nats-server {version} at {url} cannot fence appends "
            "(Nats-Expected-Last-Subject-Sequence-Subject needs 2.11 or later): an attempt that lost "
            "its task could still write to the task's history. Upgrade the server, or set "
            "VICTORIA_ALLOW_UNFENCED=1 to run without fencing"
        )
        self.url = url
        self.version = version


class StreamMissing(BrokerError):
    def __init__(self, stream: str, problem: str) -> None:
        super().__init__(
            f"JetStream stream {stream} {problem}, and this process's NATS user may not create or "
            "change streams (no answer from the server; only the user `supervisor` may): start "
            "`victoria up`, which makes every stream and bucket at its start, or make them as "
            "`supervisor` before starting this process"
        )
        self.stream = stream
        self.problem = problem


class ReplicasUnavailable(BrokerError):
    """The servers cannot hold as many copies of a stream as ``VICTORIA_REPLICAS`` asks."""

    def __init__(self, stream: str, replicas: int, reason: str) -> None:
        super().__init__(
            f"cannot make stream {stream} with {replicas} replicas (VICTORIA_REPLICAS={replicas}): "
            f"NATS says {reason!r}. A stream with N replicas needs a cluster of at least N servers "
            "with JetStream: start more servers (victoria up --nodes 3), or set VICTORIA_REPLICAS=1"
        )
        self.stream = stream
        self.replicas = replicas
        self.reason = reason


class LLMError(VictoriaError):
    kind = "error"

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class LLMUnavailable(LLMError, ConnectionError):
    kind = "unavailable"


class LLMTimeout(LLMError, TimeoutError):
    kind = "timeout"


class LLMHTTPError(LLMError):
    kind = "http_status"

    def __init__(self, message: str, *, url: str | None = None, status: int = 0) -> None:
        super().__init__(message, url=url)
        self.status = status


class LLMToolsRefused(LLMHTTPError):
    """The request carried tools, and the server or model does not take them (its error says so,
    or the models file's ``tools = false``): asked without them, in text, it may answer."""


class LLMProtocolError(LLMError):
    kind = "protocol"


class LLMContextError(LLMError):
    kind = "context"

    def __init__(self, message: str, *, url: str | None = None, need: int = 0, context: int = 0) -> None:
        super().__init__(message, url=url)
        self.need = need
        self.context = context


class ImageMissing(LLMError):
    kind = "protocol"

    def __init__(self, key: str) -> None:
        super().__init__(f"image {key} is not in the image store (kept 7 days)")
        self.key = key


class ToolError(VictoriaError):
    pass


class OutsideWorkspace(ToolError, PermissionError):
    pass


class SandboxUnavailable(ToolError):
    """No sandbox to run a command in: ``reason`` says what was tried; the message says how to get one."""

    def __init__(self, reason: str, *, macos: bool = False) -> None:
        how = (
            "sandbox-exec (/usr/bin/sandbox-exec) comes with macOS: is this macOS?"
            if macos
            else "install bubblewrap (Debian, Ubuntu: apt install bubblewrap; Fedora: dnf install bubblewrap; "
            "Arch: pacman -S bubblewrap)"
        )
        super().__init__(
            f"commands cannot run: no sandbox ({reason}); {how}, or set VICTORIA_SANDBOX=none to run "
            "them unsandboxed, each with a person's approval"
        )
        self.reason = reason


class TaskAborted(VictoriaError):
    """The task fails with ``reason``; ``kind`` becomes its ``error_kind`` (``llm_timeout``, ...)."""

    def __init__(self, task_id: str, reason: str, *, kind: str) -> None:
        super().__init__(reason)
        self.task_id = task_id
        self.reason = reason
        self.kind = kind


class FenceError(VictoriaError):
    """An append of an attempt was refused: the task's history moved on without it."""

    def __init__(self, task_id: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class TaskLost(FenceError):
    """Another attempt holds the task now. The attempt that gets this writes nothing more for the
    task, makes no more model calls and does not acknowledge its message."""

    def __init__(self, task_id: str, attempt: int, *, found: str) -> None:
        super().__init__(
            task_id, f"task {task_id}: attempt {attempt} lost the task ({found} came after its last write)"
        )
        self.attempt = attempt
        self.found = found


class CancelRequested(FenceError):
    """A cancel request was stored after the attempt's last append: the attempt still holds the
    task, and its only write left is ``task_cancelled``, fenced on the request at ``seq``."""

    def __init__(self, task_id: str, reason: str, *, seq: int) -> None:
        super().__init__(task_id, f"task {task_id}: cancel requested ({reason})")
        self.reason = reason
        self.seq = seq
