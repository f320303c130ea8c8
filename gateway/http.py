"""What every route uses: JSON answers, the error bodies, reading a body no further than a limit."""

from __future__ import annotations

from typing import Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from victoria.gateway.requests import MAX_BODY, BadRequest

_json: Final = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json.encode(body), status_code=status, media_type="application/json", headers=headers)


def unavailable(detail: str) -> Response:
    return json_response({"error": "unavailable", "detail": detail}, 503, {"Retry-After": "1"})


def not_found(task_id: str) -> Response:
    return json_response({"error": "not_found", "detail": f"no task {task_id!r}", "field": "task_id"}, 404)


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The body, read no further than one byte past ``limit`` (a bigger one is refused)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, "body_too_large", f"the body is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, "body_too_large", f"the body is over {limit} bytes")
    return b"".join(chunks)
