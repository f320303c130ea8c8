"""Subject names, built by small pure functions.

Every subject starts with ``PREFIX``. The second token names the family, so that NATS permissions
can be cut along it (a gateway may publish ``victoria.task.*.submitted`` and
``victoria.task.*.cancel`` and nothing else of the task family, for instance):

=====================================  =============================================  ==========
subject                                what travels on it                             stored in
=====================================  =============================================  ==========
``victoria.task.<task_id>.<kind>``     every fact about one task (see ``TaskKind``)   TASKS
``victoria.svc.<name>.<instance>.<k>`` service lifecycle: started, down, up           SERVICES
``victoria.heartbeat.<name>.<inst>``   one actor instance's heartbeat                 HEARTBEATS
``victoria.dlq.task.<task_id>``        a task message that exhausted its attempts     DLQ
``victoria.dlq.bad.<consumer>``        a message nobody could decode                  DLQ
``victoria.rpc.<service>.<method>``    request/reply calls (Veronica, the monitor)    (none)
``victoria.log.<actor>.<level>``       log records as events                          LOGS
``victoria.tokens.<task_id>``          streamed model tokens, best effort             (none)
=====================================  =============================================  ==========
"""

from __future__ import annotations

import re
from typing import Final, Literal

PREFIX: Final = "victoria"

TASK_STREAM: Final = "VICTORIA_TASKS"
SERVICE_STREAM: Final = "VICTORIA_SERVICES"
HEARTBEAT_STREAM: Final = "VICTORIA_HEARTBEATS"
DLQ_STREAM: Final = "VICTORIA_DLQ"
LOG_STREAM: Final = "VICTORIA_LOGS"
IDEMPOTENCY_BUCKET: Final = "victoria_idempotency"

TaskKind = Literal[
    "submitted",
    "started",
    "stage",
    "llm_request",
    "llm_result",
    "tool_result",
    "cancel",
    "completed",
    "failed",
    "cancelled",
]

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_token(value: str) -> bool:
    """True if ``value`` can stand as one subject token: no ``.``, ``*``, ``>`` or white space."""
    return _TOKEN.fullmatch(value) is not None


def _check(value: str, what: str) -> str:
    if not is_token(value):
        raise ValueError(f"{what} {value!r} is not a valid subject token ([A-Za-z0-9_-]{{1,64}})")
    return value


def task_event(task_id: str, kind: TaskKind) -> str:
    return f"{PREFIX}.task.{_check(task_id, 'task id')}.{kind}"


def task_events(task_id: str) -> str:
    """Filter for every event of one task."""
    return f"{PREFIX}.task.{_check(task_id, 'task id')}.>"


def all_tasks_of_kind(kind: TaskKind) -> str:
    return f"{PREFIX}.task.*.{kind}"


ALL_TASK_EVENTS: Final = f"{PREFIX}.task.>"


def task_id_of(subject: str) -> str:
    """The task id in a ``victoria.task.<task_id>.<kind>`` subject."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != PREFIX or parts[1] != "task":
        raise ValueError(f"not a task subject: {subject!r}")
    return parts[2]


def service_event(name: str, instance: str, kind: Literal["started", "down", "up"]) -> str:
    return f"{PREFIX}.svc.{_check(name, 'service name')}.{_check(instance, 'instance')}.{kind}"


ALL_SERVICE_EVENTS: Final = f"{PREFIX}.svc.>"


def heartbeat(name: str, instance: str) -> str:
    return f"{PREFIX}.heartbeat.{_check(name, 'service name')}.{_check(instance, 'instance')}"


ALL_HEARTBEATS: Final = f"{PREFIX}.heartbeat.>"


def dead_letter_task(task_id: str) -> str:
    return f"{PREFIX}.dlq.task.{_check(task_id, 'task id')}"


def dead_letter_bad(consumer: str) -> str:
    return f"{PREFIX}.dlq.bad.{_check(consumer, 'consumer')}"


ALL_DEAD_LETTERS: Final = f"{PREFIX}.dlq.>"


def rpc(service: str, method: str) -> str:
    return f"{PREFIX}.rpc.{_check(service, 'service')}.{_check(method, 'method')}"


VERONICA_FILES: Final = f"{PREFIX}.rpc.veronica.files"
MONITOR_SERVICES: Final = f"{PREFIX}.rpc.monitor.services"


def log(actor: str, level: str) -> str:
    return f"{PREFIX}.log.{_check(actor, 'actor')}.{_check(level.lower(), 'level')}"


ALL_LOGS: Final = f"{PREFIX}.log.>"


def tokens(task_id: str) -> str:
    return f"{PREFIX}.tokens.{_check(task_id, 'task id')}"
