"""HTTP request bodies and query parameters: parsed strictly, rejected with a named field."""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

import msgspec

from victoria.events.contracts import TASK_TYPES

MAX_BODY: Final = 1024 * 1024  # bytes
MAX_GOAL: Final = 100_000  # characters
MAX_WAIT: Final = 300.0  # seconds a sync POST /run may hold its connection
DEFAULT_WAIT: Final = 30.0  # seconds


class RunRequest(msgspec.Struct, kw_only=True):
    goal: Annotated[str, msgspec.Meta(max_length=MAX_GOAL)]
    task_type: str | None = None
    project_context: Any = None
    session_id: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    max_steps: Annotated[int, msgspec.Meta(ge=1, le=50)] | None = None
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


_decoder: Final = msgspec.json.Decoder(RunRequest)
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


def parse_run_request(raw: bytes) -> RunRequest:
    if len(raw) > MAX_BODY:
        raise BadRequest(413, "body_too_large", f"the body is over {MAX_BODY} bytes")
    if not raw.strip():
        raise BadRequest(400, "invalid_json", "the body is empty; send a JSON object with a goal", "goal")
    try:
        request = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _FIELD.search(text)
        field = (match.group(1) or match.group(2)) if match else None
        if text.startswith("Expected `object`"):
            raise BadRequest(422, "invalid_body", "the body must be a JSON object", None) from None
        raise BadRequest(422, "invalid_field", text, field) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(400, "invalid_json", "the body is nested too deeply") from None
    if not request.goal.strip():
        raise BadRequest(422, "invalid_field", "goal must not be empty", "goal")
    if request.task_type is not None and request.task_type not in TASK_TYPES:
        raise BadRequest(
            422,
            "invalid_field",
            f"task_type must be one of {sorted(TASK_TYPES)} or absent, got {request.task_type!r}",
            "task_type",
        )
    return request


def parse_bool(name: str, raw: str | None) -> bool:
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise BadRequest(422, "invalid_parameter", f"{name} must be true or false, got {raw!r}", name)


def parse_wait(raw: str | None) -> float:
    if raw is None or raw.strip() == "":
        return DEFAULT_WAIT
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
