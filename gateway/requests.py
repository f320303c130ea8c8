"""HTTP request bodies and query parameters: parsed strictly, rejected with a named field."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Final

import msgspec

from victoria.events.contracts import TASK_TYPES, ChatTurn
from victoria.runtime.config import DEFAULT_MAX_STEPS_CEILING
from victoria.runtime.images import MAX_IMAGE_BYTES, MAX_IMAGES

MAX_BODY: Final = 1024 * 1024  # bytes of a body, but for goals
MAX_RUN_BODY: Final = 64 * 1024 * 1024  # bytes of a POST /run or /stream body (images in base64)
MAX_GOAL: Final = 100_000  # characters
MAX_WAIT: Final = 3600.0  # seconds a sync POST /run may be asked (?wait=) to hold its connection
MAX_HISTORY_TURNS: Final = 10  # turns of chat_history that reach the model, the latest
MAX_HISTORY_CHARS: Final = 16_000  # characters of chat_history that reach the model, the latest


class Turn(msgspec.Struct):
    """One earlier exchange of the conversation (``chat_history``); an empty one is dropped."""

    user: str | None = None
    assistant: str | None = None


_TASK_TYPES: Final = {"enum": sorted(TASK_TYPES)}
_AT_LEAST_ONE: Final = {"minimum": 1}
_IMAGES: Final = {"maxItems": MAX_IMAGES, "items": {"contentEncoding": "base64"}}
_WORDS: Final = {"pattern": r"\S"}


class RunBody(msgspec.Struct, kw_only=True):
    """The body of ``POST /run``, ``/stream`` and ``/plan`` as the old server's clients send it;
    fields nobody here knows are ignored. ``goal`` (or, without it, ``prompt``) is required and not
    blank; ``max_steps`` above the ceiling is lowered to it."""

    # The checks ``parse_run_request`` makes by hand are stated in the schema (extra_json_schema
    # documents without validating), so its error messages stay its own.
    goal: Annotated[str, msgspec.Meta(max_length=MAX_GOAL, extra_json_schema=_WORDS)] | None = None
    prompt: Annotated[str, msgspec.Meta(max_length=MAX_GOAL, extra_json_schema=_WORDS)] | None = None
    task_type: Annotated[str, msgspec.Meta(extra_json_schema=_TASK_TYPES)] | None = None
    project_context: Any = None
    session_id: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    max_steps: Annotated[int, msgspec.Meta(extra_json_schema=_AT_LEAST_ONE)] | None = None
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    chat_history: list[Turn] | None = None
    verbose: bool | None = None
    images_base64: (
        Annotated[
            list[str],
            msgspec.Meta(
                extra_json_schema=_IMAGES,
                description=f"Plain base64 or data: URLs; up to {MAX_IMAGES}, {MAX_IMAGE_BYTES} bytes each",
            ),
        ]
        | None
    ) = None
    use_enhanced: bool | None = None


RUN_BODY_SCHEMA: Final = {
    "anyOf": [
        {"required": ["goal"], "properties": {"goal": {"type": "string", **_WORDS}}},
        {
            "required": ["prompt"],
            "properties": {"goal": {"type": "null"}, "prompt": {"type": "string", **_WORDS}},
        },
    ]
}
"""What the schema of ``RunBody`` cannot say field by field: a goal, or a prompt in its place."""

RunBodySchema = Annotated[RunBody, msgspec.Meta(extra_json_schema=RUN_BODY_SCHEMA)]
"""``RunBody`` as ``/openapi.json`` describes it."""


class RunRequest(msgspec.Struct, kw_only=True):
    """A goal as the gateway takes it: checked, bounded, with what the client asked for kept."""

    goal: str
    task_type: str | None = None
    project_context: Any = None
    session_id: str | None = None
    max_steps: int | None = None
    max_steps_requested: int | None = None
    """What the client asked for, when it was above the ceiling and ``max_steps`` was lowered."""
    model: str | None = None
    chat_history: list[ChatTurn] = []
    verbose: bool = False
    images: list[bytes] = []
    use_enhanced: bool = False
    """Accepted from the old server's clients; nothing here is "enhanced" (``GET /status`` says so)."""


_decoder: Final = msgspec.json.Decoder(RunBody)
_FIELD: Final = re.compile(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*)|field `([A-Za-z_][A-Za-z0-9_]*)`")


class BadRequest(Exception):
    """A client error: ``status`` 4xx, with the offending ``field`` when there is one."""

    def __init__(self, status: int, error: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.field = field

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error, "detail": self.detail}
        if self.field is not None:
            out["field"] = self.field
        return out


def parse_run_request(raw: bytes, *, max_steps_ceiling: int = DEFAULT_MAX_STEPS_CEILING) -> RunRequest:
    if len(raw) > MAX_RUN_BODY:
        raise BadRequest(413, "body_too_large", f"the body is over {MAX_RUN_BODY} bytes")
    if not raw.strip():
        raise BadRequest(400, "invalid_json", "the body is empty; send a JSON object with a goal", "goal")
    try:
        body = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _FIELD.search(text)
        field = (match.group(1) or match.group(2)) if match else None
        if field is None and text.startswith("Expected `object`"):
            raise BadRequest(422, "invalid_body", "the body must be a JSON object", None) from None
        raise BadRequest(422, "invalid_field", text, field) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(400, "invalid_json", "the body is nested too deeply") from None
    return checked_run_request(body, max_steps_ceiling=max_steps_ceiling)


def checked_run_request(body: RunBody, *, max_steps_ceiling: int = DEFAULT_MAX_STEPS_CEILING) -> RunRequest:
    """A decoded body's checks by hand (``BadRequest`` naming the field): a goal that is not
    blank, a known task type, ``max_steps`` at least 1 and lowered to the ceiling; the images
    decoded. The MCP tools (``gateway/mcpserver.py``) check their arguments here too."""
    goal = body.goal if body.goal is not None else body.prompt
    if goal is None:
        raise BadRequest(422, "invalid_field", "goal is required (prompt is taken for it too)", "goal")
    if not goal.strip():
        raise BadRequest(422, "invalid_field", "goal must not be empty", "goal")
    if body.task_type is not None and body.task_type not in TASK_TYPES:
        raise BadRequest(
            422,
            "invalid_field",
            f"task_type must be one of {sorted(TASK_TYPES)} or absent, got {body.task_type!r}",
            "task_type",
        )
    max_steps, requested = body.max_steps, None
    if max_steps is not None:
        if max_steps < 1:
            raise BadRequest(
                422, "invalid_field", f"max_steps must be at least 1, got {max_steps}", "max_steps"
            )
        if max_steps > max_steps_ceiling:
            max_steps, requested = max_steps_ceiling, max_steps
    return RunRequest(
        goal=goal,
        task_type=body.task_type,
        project_context=body.project_context,
        session_id=body.session_id,
        max_steps=max_steps,
        max_steps_requested=requested,
        model=body.model,
        chat_history=_recent_turns(body.chat_history or []),
        verbose=bool(body.verbose),
        images=_images(body.images_base64 or []),
        use_enhanced=bool(body.use_enhanced),
    )


def _recent_turns(turns: list[Turn]) -> list[ChatTurn]:
    return bounded_turns([ChatTurn(user=t.user or "", assistant=t.assistant or "") for t in turns])


def bounded_turns(turns: list[ChatTurn]) -> list[ChatTurn]:
    """The latest turns, at most ``MAX_HISTORY_TURNS`` of them and ``MAX_HISTORY_CHARS`` in all."""
    kept: list[ChatTurn] = []
    budget = MAX_HISTORY_CHARS
    for turn in reversed(turns[-MAX_HISTORY_TURNS:]):
        user, assistant = turn.user.strip(), turn.assistant.strip()
        if not user and not assistant:
            continue
        size = len(user) + len(assistant)
        if size > budget:
            if not kept:  # the latest turn alone is too long: keep its end
                half = budget // 2
                kept.append(ChatTurn(user=user[-half:], assistant=assistant[-half:]))
            break
        kept.append(ChatTurn(user=user, assistant=assistant))
        budget -= size
    return kept[::-1]


def _images(encoded: list[str]) -> list[bytes]:
    if len(encoded) > MAX_IMAGES:
        raise BadRequest(
            422, "invalid_field", f"at most {MAX_IMAGES} images, got {len(encoded)}", "images_base64"
        )
    out: list[bytes] = []
    for n, text in enumerate(encoded):
        if text.startswith("data:") and "," in text:  # a data URL: keep what follows the comma
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(
                422, "invalid_field", f"images_base64[{n}] is not base64", "images_base64"
            ) from None
        if not data:
            raise BadRequest(422, "invalid_field", f"images_base64[{n}] is empty", "images_base64")
        if len(data) > MAX_IMAGE_BYTES:
            raise BadRequest(
                422,
                "invalid_field",
                f"images_base64[{n}] is {len(data)} bytes; an image may be {MAX_IMAGE_BYTES}",
                "images_base64",
            )
        out.append(data)
    return out


def parse_bool(name: str, raw: str | None) -> bool:
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise BadRequest(422, "invalid_parameter", f"{name} must be true or false, got {raw!r}", name)


def parse_wait(raw: str | None) -> float | None:
    """Seconds a sync request may wait (``?wait=``), or None: until the task ends."""
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(
            422, "invalid_parameter", f"wait must be a number of seconds, got {raw!r}", "wait"
        ) from None
    if not 0 <= value <= MAX_WAIT:
        raise BadRequest(422, "invalid_parameter", f"wait must be between 0 and {MAX_WAIT:g} seconds", "wait")
    return value


def clean_header(value: str | None, limit: int = 200) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value[:limit] if value else None


MAX_IDEMPOTENCY_KEY: Final = 255  # characters


def parse_idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        return None
    if len(value) > MAX_IDEMPOTENCY_KEY:
        raise BadRequest(
            422,
            "invalid_header",
            f"Idempotency-Key must be at most {MAX_IDEMPOTENCY_KEY} characters",
            "Idempotency-Key",
        )
    return value


class RunQuery(msgspec.Struct, kw_only=True):
    """The query of ``POST /run`` (read by ``parse_bool`` and ``parse_wait``)."""

    async_mode: Annotated[
        bool, msgspec.Meta(description="Answer 202 with the task id at once instead of waiting for its end")
    ] = False
    wait: (
        Annotated[
            float,
            msgspec.Meta(
                ge=0,
                le=MAX_WAIT,
                description="Seconds a synchronous request waits at most; then 202 if the task still runs",
            ),
        ]
        | None
    ) = None


class PlanQuery(msgspec.Struct, kw_only=True):
    """The query of ``POST /plan``."""

    wait: (
        Annotated[
            float,
            msgspec.Meta(
                ge=0, le=MAX_WAIT, description="Seconds to wait at most; then 202 if it still plans"
            ),
        ]
        | None
    ) = None


class SubmitHeaders(msgspec.Struct, kw_only=True):
    """The headers a route that takes a goal reads (``clean_header``, ``parse_idempotency_key``)."""

    correlation_id: (
        Annotated[
            str, msgspec.Meta(description="Kept with the task and in every answer; one is made when absent")
        ]
        | None
    ) = msgspec.field(default=None, name="X-Correlation-ID")
    idempotency_key: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=MAX_IDEMPOTENCY_KEY,
                description="A repeat gets the first answer: same code, same body (a stream streams the same task)",
            ),
        ]
        | None
    ) = msgspec.field(default=None, name="Idempotency-Key")


class TaskPath(msgspec.Struct, kw_only=True):
    """The path of the routes about one task; an id that names no task is a 404."""

    task_id: Annotated[str, msgspec.Meta(description="The task's id, as POST /run answered it")]


class ApprovalPath(TaskPath, kw_only=True):
    """The path of the route about one approval of one task."""

    approval_id: Annotated[
        str, msgspec.Meta(description="The call's id, as `pending_approvals` of the task's status names it")
    ]
