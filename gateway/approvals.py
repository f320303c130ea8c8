"""A person's decision on a tool call that waits for one: ``POST /run/{task_id}/approvals/{id}``.

The decision is an ``approval_decided`` event on the call's own subject, which takes one message
ever: the first decision holds, whoever sent it (another gateway, the dashboard, ``victoria
approve``, Victoria herself when the wait timed out), and a second one is answered 409 with the
first. ``by`` is the name of the caller's token in the tokens file (``VICTORIA_API_TOKENS_FILE``),
``token`` for the single ``VICTORIA_API_TOKEN``, or ``local`` when no token is configured.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from victoria.events import subjects
from victoria.events.contracts import ApprovalDecided
from victoria.events.fold import TaskHistory
from victoria.gateway.backend import Backend
from victoria.gateway.http import json_response, not_found, read_body
from victoria.gateway.requests import BadRequest
from victoria.gateway.tasks import lookup
from victoria.runtime import fence, reads

MAX_REASON: Final = 2000


class DecisionBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What ``POST /run/{task_id}/approvals/{id}`` takes."""

    decision: Literal["approve", "deny"]
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON)] = ""


class Decided(msgspec.Struct, kw_only=True):
    """A decision on one approval: the one just made (200), or the one made before (409)."""

    task_id: str
    id: str
    decision: Literal["approve", "deny"]
    reason: str
    by: str
    decided_at: datetime
    error: str | None = None
    """``already_decided`` on a 409."""


_body: Final = msgspec.json.Decoder(DecisionBody)


def _decision_of(raw: bytes) -> DecisionBody:
    if not raw.strip():
        raise BadRequest(400, "invalid_json", 'the body is empty; send {"decision": "approve" | "deny"}')
    try:
        return _body.decode(raw)
    except msgspec.ValidationError as exc:
        text = str(exc)
        field = "reason" if "$.reason" in text else "decision"
        raise BadRequest(422, "invalid_field", text, field) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(400, "invalid_json", f"the body is not valid JSON: {exc}") from None


def decided_body(task_id: str, decided: ApprovalDecided, *, error: str | None = None) -> Decided:
    """A decision as the route answers it (and the MCP tool ``decide_approval``)."""
    return Decided(
        task_id=task_id,
        id=decided.approval_id,
        decision=decided.decision,
        reason=decided.reason,
        by=decided.by,
        decided_at=decided.ts,
        error=error,
    )


def _answer(task_id: str, decided: ApprovalDecided, status: int) -> Response:
    return json_response(
        decided_body(task_id, decided, error="already_decided" if status == 409 else None), status
    )


async def decide(request: Request, backend: Backend) -> Response:
    """``POST /run/{task_id}/approvals/{id}``: approve or deny a tool call that waits for a person.
    200 with the decision; 409 with the earlier one when it was decided before; 404 for a task or an
    approval id that does not exist."""
    task_id = request.path_params["task_id"]
    approval_id = request.path_params["approval_id"]
    said = _decision_of(await read_body(request))
    history = await lookup(backend, task_id)
    if history is None:
        return not_found(task_id)
    found = await record(backend, history, approval_id, said, by=_who(request))
    if found is None:
        detail = f"task {task_id!r} has no approval {approval_id!r}"
        return json_response({"error": "not_found", "detail": detail, "field": "approval_id"}, 404)
    decided, new = found
    return _answer(task_id, decided, 200 if new else 409)


async def record(
    backend: Backend, history: TaskHistory, approval_id: str, said: DecisionBody, *, by: str
) -> tuple[ApprovalDecided, bool] | None:
    """The decision that holds on the task's approval ``approval_id``, and whether it is this one
    (False: one was made before, and it stands); None when the task has no such approval."""
    task_id = history.task_id
    known = (history.approvals or {}).get(approval_id) if subjects.is_token(approval_id) else None
    if known is None or known.requested is None:
        return None
    if known.decided is not None:
        return known.decided, False
    decided = ApprovalDecided(
        task_id=task_id,
        approval_id=approval_id,
        decision=said.decision,
        reason=said.reason.strip(),
        by=by,
    )
    stored = await fence.append_once(
        backend.nc,
        subjects.approval(task_id, approval_id),
        decided,
        notice=subjects.approval_decided(task_id, approval_id),
    )
    if not stored:
        earlier = await reads.last_approval(backend.js, task_id, approval_id)
        return earlier or decided, False
    history.apply(decided)  # this gateway's view shows it at once; the live feed's copy is a no-op
    return decided, True


def _who(request: Request) -> str:
    client = request.scope.get("state", {}).get("client")
    return str(client) if client else "local"
