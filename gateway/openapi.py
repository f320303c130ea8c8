"""``GET /openapi.json``: the gateway's OpenAPI 3.1 document, made from the msgspec types its routes
decode requests with (``gateway/requests.py``) and encode answers with (``gateway/schemas.py``, the
status object, the contracts' events), never written by hand.

The routes and what each decodes and answers are declared once, in ``gateway/routes.py``; this
module renders them. The document is built on the first request and kept (``operations.openapi``
imports this module then, so none of it runs at start-up).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, Final

import msgspec

from victoria import __version__
from victoria.gateway.requests import (
    ApprovalPath,
    TaskPath,
)
from victoria.gateway.routes import NAMED_UNIONS, OPERATIONS, UNAUTHORIZED, Answer, Operation
from victoria.gateway.schemas import (
    TaskKnowledge,
)

OPENAPI_VERSION: Final = "3.1.0"
REF: Final = "#/components/schemas/{name}"
JSON: Final = "application/json"
EVENT_STREAM: Final = "text/event-stream"
PROMETHEUS_TEXT: Final = "text/plain"


def _types(op: Operation) -> list[Any]:
    found = [t for t in (op.body, op.query, op.headers) if t is not None]
    if "{" in op.path:
        found.append(_path_of(op))
    for answer in op.answers:
        found += answer.body if isinstance(answer.body, tuple) else [answer.body]
        found.append(answer.stream)
    return [t for t in found if t is not None]


def _path_of(op: Operation) -> type[TaskPath]:
    """The parameters of a route's path."""
    return ApprovalPath if "{approval_id}" in op.path else TaskPath


class _Schemas:
    """Every type's JSON schema, in one set of components."""

    def __init__(self, types: list[Any]) -> None:
        unique = list(dict.fromkeys([*types, TaskKnowledge, *NAMED_UNIONS.values()]))
        schemas, self.components = msgspec.json.schema_components(unique, ref_template=REF)
        self._by_type = dict(zip(unique, schemas, strict=True))
        for name, union in NAMED_UNIONS.items():
            self.components[name] = self._by_type[union]

    def of(self, t: Any) -> dict[str, Any]:
        if isinstance(t, tuple):
            return {"anyOf": [self.of(one) for one in t]}
        for name, union in NAMED_UNIONS.items():
            if t == union:
                return {"$ref": REF.format(name=name)}
        schema: dict[str, Any] = self._by_type[t]
        return schema

    def parameters(self, struct: type[msgspec.Struct], where: str) -> list[dict[str, Any]]:
        """One parameter per field of ``struct``."""
        schema = self.components[struct.__name__]
        required = set(schema.get("required", ()))
        out = []
        for name, field in schema["properties"].items():
            field = _present(field)
            parameter: dict[str, Any] = {
                "name": name,
                "in": where,
                "required": where == "path" or name in required,
            }
            description = field.pop("description", None)
            if description:
                parameter["description"] = description
            parameter["schema"] = field
            out.append(parameter)
        return out


def _present(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema: a parameter is there or not, never null."""
    schema = dict(schema)
    if schema.get("default", 0) is None:
        del schema["default"]
    alternatives = schema.get("anyOf")
    if alternatives is not None:
        kept = [one for one in alternatives if one != {"type": "null"}]
        if len(kept) == 1:
            del schema["anyOf"]
            schema = {**kept[0], **schema}
        else:
            schema["anyOf"] = kept
    return schema


def _sse_event(data: dict[str, Any], *, with_id: bool) -> dict[str, Any]:
    """One server-sent event as a client parses it; its ``data`` is JSON described by ``data``."""
    properties: dict[str, Any] = {
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": JSON, "contentSchema": data},
    }
    if with_id:
        properties["id"] = {"type": "string"}
    return {"type": "object", "properties": properties, "required": ["data"]}


def _answer(answer: Answer, schemas: _Schemas) -> dict[str, Any]:
    out: dict[str, Any] = {"description": answer.description}
    content: dict[str, Any] = {}
    if answer.stream is not None:
        events = answer.stream == NAMED_UNIONS["TaskEvent"]
        content[EVENT_STREAM] = {"schema": _sse_event(schemas.of(answer.stream), with_id=events)}
    if answer.body is not None:
        content[JSON] = {"schema": schemas.of(answer.body)}
    if answer.text:
        content[PROMETHEUS_TEXT] = {"schema": {"type": "string"}}
    if answer.media is not None:
        content[answer.media] = {"schema": {"type": "string"}}
    if content:
        out["content"] = content
    if answer.retry_after:
        out["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
        }
    if answer.status == 401:
        out["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return out


def _description(handler: Callable[..., Any]) -> str:
    text = inspect.cleandoc(handler.__doc__ or "")
    return re.sub(r"\s*\n\s*", " ", text).replace("``", "`")


def _operation(op: Operation, schemas: _Schemas) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tags": [op.tag],
        "summary": op.summary,
        "description": _description(op.handler),
        "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{op.method.lower()}{op.path}").strip("_"),
    }
    parameters: list[dict[str, Any]] = []
    if "{" in op.path:
        parameters += schemas.parameters(_path_of(op), "path")
    if op.query is not None:
        parameters += schemas.parameters(op.query, "query")
    if op.headers is not None:
        parameters += schemas.parameters(op.headers, "header")
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {"required": False, "content": {JSON: {"schema": schemas.of(op.body)}}}
    answers = op.answers if op.open else (*op.answers, UNAUTHORIZED)
    responses: dict[str, Any] = {}
    for answer in sorted(answers, key=lambda a: a.status):
        responses[str(answer.status)] = _answer(answer, schemas)
    out["responses"] = responses
    if op.open:
        out["security"] = []
    return out


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route in ``OPERATIONS``."""
    schemas = _Schemas([t for op in OPERATIONS for t in _types(op)])
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas)
    for op in OPERATIONS:  # parameters are described in place, not as components
        for struct in (op.query, op.headers, TaskPath, ApprovalPath):
            if struct is not None:
                schemas.components.pop(struct.__name__, None)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "victoria",
            "version": __version__,
            "description": "A crash-proof runtime for LLM agent tasks: the HTTP gateway, which speaks the "
            "old Victoria server's contract (docs/compat.md).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}, {"basicAuth": []}],
        "tags": [
            {"name": "old server"},
            {"name": "tasks"},
            {"name": "mcp", "description": "Victoria as an MCP server: the tools over Streamable HTTP"},
            {"name": "operations"},
            {"name": "dashboard"},
        ],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API token"},
                "basicAuth": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "The API token as the password (or as the user name, with no password)",
                },
            },
        },
    }


@functools.cache
def encoded() -> bytes:
    """The document as JSON, built once."""
    return msgspec.json.encode(document())
