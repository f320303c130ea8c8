"""One error tree for the whole project.

::

    VictoriaError
    ├── ConfigError(ValueError)            a setting is missing or invalid; names the variable
    ├── BrokerError                        NATS or JetStream trouble
    │   ├── BrokerUnavailable(ConnectionError)   not connected; a retry later can help
    │   └── EmbeddedServerError            the embedded nats-server would not start
    ├── LLMError                           a model call did not give an answer
    │   ├── LLMUnavailable(ConnectionError)      the model server refused or is unreachable
    │   ├── LLMTimeout(TimeoutError)       the call passed its deadline
    │   ├── LLMHTTPError                   the model server answered with an HTTP error status
    │   └── LLMProtocolError               the answer was not in the protocol's shape
    ├── ToolError                          a tool call failed (bad path, outside the workspace, ...)
    │   └── OutsideWorkspace(PermissionError)
    └── TaskAborted                        a task stops: cancelled or past its deadline
"""

from __future__ import annotations


class VictoriaError(Exception):
    """Base of every error this project raises on purpose."""

    retryable: bool = False


class ConfigError(VictoriaError, ValueError):
    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class BrokerError(VictoriaError):
    pass


class BrokerUnavailable(BrokerError, ConnectionError):
    retryable = True


class EmbeddedServerError(BrokerError):
    pass


class LLMError(VictoriaError):
    kind = "error"

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class LLMUnavailable(LLMError, ConnectionError):
    kind = "unavailable"
    retryable = True


class LLMTimeout(LLMError, TimeoutError):
    kind = "timeout"
    retryable = True


class LLMHTTPError(LLMError):
    kind = "http_status"

    def __init__(self, message: str, *, url: str | None = None, status: int = 0) -> None:
        super().__init__(message, url=url)
        self.status = status
        self.retryable = status >= 500 or status == 429


class LLMProtocolError(LLMError):
    kind = "protocol"


class ToolError(VictoriaError):
    pass


class OutsideWorkspace(ToolError, PermissionError):
    pass


class TaskAborted(VictoriaError):
    def __init__(self, task_id: str, reason: str, *, kind: str) -> None:
        super().__init__(reason)
        self.task_id = task_id
        self.reason = reason
        self.kind = kind
