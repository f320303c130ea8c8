"""Subject names, built by small pure functions.

Every subject starts with ``PREFIX``. The second token names the family, so that NATS permissions
can be cut along it (a gateway may publish ``victoria.task.*.*.submitted`` and
``victoria.task.*.*.cancel`` and nothing else of the task family, for instance):

======================================  =============================================  ==========
subject                                 what travels on it                             stored in
======================================  =============================================  ==========
``victoria.task.<s>.<task_id>.<kind>``  the task's own history (see ``TaskKind``)      TASKS_<s>
``victoria.task.<s>.<id>.llm_result.<r>`` the model's answer to request ``<r>``        TASKS_<s>
``victoria.svc.<name>.<instance>.<k>`` service lifecycle: started, down, up           SERVICES
``victoria.heartbeat.<name>.<inst>``   one actor instance's heartbeat                 HEARTBEATS
``victoria.dlq.task.<task_id>``        a task message that exhausted its attempts     DLQ
``victoria.dlq.bad.<consumer>``        a message nobody could decode                  DLQ
``victoria.rpc.<service>.<method>``    request/reply calls (Veronica, the monitor)    (none)
``victoria.log.<actor>.<level>``       log records as events                          LOGS
``victoria.tokens.<task_id>``          streamed model tokens, best effort             (none)
``victoria.result.<task_id>.<r>``       a model answer, once stored (to the asker)     (none)
``victoria.decided.<task_id>.<a>``     a decision on an approval, once stored         (none)
``victoria.progress.<task_id>``        a model call waiting for its model             (none)
=====================================  =============================================  ==========

A task's own history (``task_history``: ``victoria.task.<s>.<task_id>.*``, one token after the id)
is what its attempts write, with the submission and cancel requests: every append of an attempt is
fenced on it (``victoria.runtime.fence``). Model results are one token longer, so that filter
leaves them out: the runner writes them while the attempt waits, and they fence off nobody.
"""

from __future__ import annotations

import re
import zlib
from typing import Final, Literal

PREFIX: Final = "victoria"

TASK_SHARDS: Final = 4
"""Task events are spread over this many streams, ``VICTORIA_TASKS_0`` ... ``_3``, by a hash of the
task id (the shard ``<s>`` in the subject). Each stream fsyncs on its own, so four of them take about
twice the appends of one; on a cluster their leaders spread over the servers. All of one task's
events are in one stream, in order. Changing the number moves tasks between streams: a migration."""
SERVICE_STREAM: Final = "VICTORIA_SERVICES"
HEARTBEAT_STREAM: Final = "VICTORIA_HEARTBEATS"
DLQ_STREAM: Final = "VICTORIA_DLQ"
LOG_STREAM: Final = "VICTORIA_LOGS"
IDEMPOTENCY_BUCKET: Final = "victoria_idempotency"
IMAGES_BUCKET: Final = "victoria_images"
SESSIONS_BUCKET: Final = "victoria_sessions"
MODELS_BUCKET: Final = "victoria_models"
MCP_BUCKET: Final = "victoria_mcp"
"""The MCP servers of Veronica's instances: their state and tools, under ``<server>.<instance>``."""
BUCKETS: Final = (IDEMPOTENCY_BUCKET, SESSIONS_BUCKET, MODELS_BUCKET, MCP_BUCKET)
"""The key-value buckets (their streams are ``KV_<bucket>``); the images are an object store."""
"""Model servers as the runners share them: what each runs now, what waits, what it serves."""
TELEGRAM: Final = "telegram"
"""The service name of the Telegram bot that registers with the gateway and beats through it."""
IMAGES_STREAM: Final = f"OBJ_{IMAGES_BUCKET}"
"""The stream of the object store of images (nats-py names it ``OBJ_<bucket>``)."""

TaskKind = Literal[
    "submitted",
    "started",
    "stage",
    "llm_request",
    "tool_result",
    "tool_intent",
    "approval_request",
    "cancel",
    "completed",
    "failed",
    "cancelled",
]
"""The last token of an event of a task's own history."""
ResultKind = Literal["llm_result", "tool_claim", "tool_outcome", "approval"]
LLM_RESULT: Final[ResultKind] = "llm_result"
"""The token before the request id in a model result's subject."""
RESULT_KINDS: Final[tuple[ResultKind, ...]] = ("llm_result", "tool_claim", "tool_outcome", "approval")
"""Kinds stored beside a task's own history, each followed by the id of what it answers."""

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _family(family: str) -> str:
    """Filter for every subject of one family (``victoria.<family>.>``)."""
    return f"{PREFIX}.{family}.>"


def is_token(value: str) -> bool:
    """True if ``value`` can stand as one subject token: no ``.``, ``*``, ``>`` or white space."""
    return _TOKEN.fullmatch(value) is not None


def _check(value: str, what: str) -> str:
    if not is_token(value):
        raise ValueError(f"{what} {value!r} is not a valid subject token ([A-Za-z0-9_-]{{1,64}})")
    return value


def shard_of(task_id: str) -> int:
    """The shard (and so the stream) of a task: CRC-32 of its id, modulo ``TASK_SHARDS``."""
    return zlib.crc32(_check(task_id, "task id").encode()) % TASK_SHARDS


def task_stream(shard: int) -> str:
    if not 0 <= shard < TASK_SHARDS:
        raise ValueError(f"shard {shard} is not in 0..{TASK_SHARDS - 1}")
    return f"VICTORIA_TASKS_{shard}"


TASK_STREAMS: Final = tuple(f"VICTORIA_TASKS_{n}" for n in range(TASK_SHARDS))


def task_stream_of(task_id: str) -> str:
    return task_stream(shard_of(task_id))


def bucket_stream(bucket: str) -> str:
    """The stream of a key-value bucket (nats-py names it ``KV_<bucket>``)."""
    return f"KV_{bucket}"


MCP_TOOL_PREFIX: Final = "mcp__"
_MCP_NAME = re.compile(r"[^A-Za-z0-9_-]")


def mcp_key(server: str, instance: str) -> str:
    """Where one instance of Veronica records one MCP server, in ``MCP_BUCKET``."""
    return f"{_check(server, 'MCP server name')}.{_check(instance, 'instance')}"


def mcp_tool(server: str, tool: str) -> str:
    """The name the model calls an MCP server's tool by: ``mcp__<server>__<tool>`` (a character
    the protocols do not take in a function's name becomes ``_``; at most 64 characters)."""
    return f"{MCP_TOOL_PREFIX}{server}__{_MCP_NAME.sub('_', tool)}"[:64]


def task_event(task_id: str, kind: TaskKind) -> str:
    return f"{PREFIX}.task.{shard_of(task_id)}.{task_id}.{kind}"


def task_events(task_id: str) -> str:
    """Filter for every event of one task: its own history and the model's results."""
    return f"{PREFIX}.task.{shard_of(task_id)}.{task_id}.>"


def task_history(task_id: str) -> str:
    """Filter for the task's own history: every event but the model's results. Appends of an
    attempt are fenced on it."""
    return f"{PREFIX}.task.{shard_of(task_id)}.{task_id}.*"


def llm_result(task_id: str, request_id: str) -> str:
    """The subject of the model's answer to one request of one task (at most one is stored)."""
    return f"{PREFIX}.task.{shard_of(task_id)}.{task_id}.{LLM_RESULT}.{_check(request_id, 'request id')}"


def tool_claim(task_id: str, call_id: str) -> str:
    """Who took one tool call of one task (at most one is stored)."""
    return f"{PREFIX}.task.{shard_of(task_id)}.{task_id}.tool_claim.{_check(call_id, 'call id')}"


def tool_outcome(task_id: str, call_id: str) -> str:
    """What one tool call of one task did (at most one is stored)."""
    return f"{PREFIX}.task.{shard_of(task_id)}.{task_id}.tool_outcome.{_check(call_id, 'call id')}"


def approval(task_id: str, approval_id: str) -> str:
    """A person's decision on one tool call of one task that waits for it (at most one is stored)."""
    return f"{PREFIX}.task.{shard_of(task_id)}.{task_id}.approval.{_check(approval_id, 'approval id')}"


def shard_approvals(shard: int) -> str:
    """Filter for every decision on an approval stored in one shard's stream."""
    task_stream(shard)
    return f"{PREFIX}.task.{shard}.*.approval.*"


def approval_decided(task_id: str, approval_id: str) -> str:
    """Where the gateway says, once stored, a decision on one approval (to the waiting attempt): a
    family of its own, so that the gateway, which may publish here, cannot say a model result."""
    return f"{PREFIX}.decided.{_check(task_id, 'task id')}.{_check(approval_id, 'approval id')}"


def result_stored(task_id: str, request_id: str) -> str:
    """Where the runner says, once JetStream has stored it, the model's answer to one request: the
    asking attempt listens here, not on the stream's subject, whose core subscribers would also
    hear a publish the stream did not store (a cluster electing a leader)."""
    return f"{PREFIX}.result.{_check(task_id, 'task id')}.{_check(request_id, 'request id')}"


def all_tasks_of_kind(kind: TaskKind) -> str:
    """Filter for one kind of event of every task, in every shard (for core subscriptions)."""
    return f"{PREFIX}.task.*.*.{kind}"


def shard_events(shard: int) -> str:
    """Filter for every event stored in one shard's stream."""
    task_stream(shard)
    return f"{PREFIX}.task.{shard}.>"


def shard_events_of_kind(shard: int, kind: TaskKind) -> str:
    task_stream(shard)
    return f"{PREFIX}.task.{shard}.*.{kind}"


ALL_TASK_EVENTS: Final = _family("task")


def task_id_of(subject: str) -> str:
    """The task id in a task subject (``victoria.task.<shard>.<task_id>.<kind>[.<request_id>]``)."""
    parts = subject.split(".")
    shape = len(parts) == 5 or (len(parts) == 6 and parts[4] in RESULT_KINDS)
    if not shape or parts[0] != PREFIX or parts[1] != "task" or not is_token(parts[3]):
        raise ValueError(f"not a task subject: {subject!r}")
    return parts[3]


def is_history(subject: str) -> bool:
    """True for an event of a task's own history, False for a model result (or anything else)."""
    parts = subject.split(".")
    return len(parts) == 5 and parts[0] == PREFIX and parts[1] == "task"


def service_event(name: str, instance: str, kind: Literal["started", "down", "up"]) -> str:
    return f"{PREFIX}.svc.{_check(name, 'service name')}.{_check(instance, 'instance')}.{kind}"


ALL_SERVICE_EVENTS: Final = _family("svc")


def heartbeat(name: str, instance: str) -> str:
    """One instance's heartbeats (a memory-stored stream keeps the last few)."""
    return f"{PREFIX}.heartbeat.{_check(name, 'service name')}.{_check(instance, 'instance')}"


ALL_HEARTBEATS: Final = _family("heartbeat")


def heartbeats_of(name: str) -> str:
    """Filter for the heartbeats of every instance of one service."""
    return f"{PREFIX}.heartbeat.{_check(name, 'service name')}.*"


def dead_letter_task(task_id: str) -> str:
    """A task message that exhausted its attempts."""
    return f"{PREFIX}.dlq.task.{_check(task_id, 'task id')}"


def dead_letter_bad(consumer: str) -> str:
    """A message that ``consumer`` could not decode."""
    return f"{PREFIX}.dlq.bad.{_check(consumer, 'consumer')}"


ALL_DEAD_LETTERS: Final = _family("dlq")


def rpc(service: str, method: str) -> str:
    return f"{PREFIX}.rpc.{_check(service, 'service')}.{_check(method, 'method')}"


VERONICA_FILES: Final = rpc("veronica", "files")
MONITOR_SERVICES: Final = rpc("monitor", "services")
RUNNER_HOLDING: Final = rpc("llm-runner", "holding")
"""Asked of every runner by one that got a request again: answered only by one calling for it."""


def log(actor: str, level: str) -> str:
    """The log records of one actor at one level (``LogRecord``)."""
    return f"{PREFIX}.log.{_check(actor, 'actor')}.{_check(level.lower(), 'level')}"


ALL_LOGS: Final = _family("log")


def tokens(task_id: str) -> str:
    """A task's model output as it is written (``TokenChunk``), best effort, not stored."""
    return f"{PREFIX}.tokens.{_check(task_id, 'task id')}"


def progress(task_id: str) -> str:
    """Transient progress of a task that no event records (a model call waiting for its model)."""
    return f"{PREFIX}.progress.{_check(task_id, 'task id')}"


ALL_PROGRESS: Final = f"{PREFIX}.progress.*"
