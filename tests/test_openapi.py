"""``/openapi.json``: a valid OpenAPI 3.1 document of every route, made from the msgspec types; and
schemathesis, run against ``victoria up`` (with a database, so ``/runs`` answers), finds no 5xx and
no answer that the document does not describe."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core import INTERNAL_BUFFER_SIZE
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema
from starlette.routing import Route

from tests.pg import fresh_database
from tests.system import System
from victoria.gateway import dashboard, openapi
from victoria.gateway.app import create_app
from victoria.gateway.backend import GatewayState
from victoria.gateway.requests import MAX_GOAL
from victoria.runtime.config import Config

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
SEED = 12  # schemathesis derives each operation's seed from it: the same cases on every run
MAX_EXAMPLES = 8  # per operation in the fuzzing phase; the coverage phase adds its boundary cases
REQUEST_TIMEOUT = 60.0  # seconds; a synchronous POST /run waits for its task (deadline below)
TASK_DEADLINE = "20"  # seconds: no generated task can hold a request longer
DATABASE_WAIT = 30.0  # seconds for the projector to create the history's tables
NEVER_ENDING = ["/tasks/events"]  # event streams with no end: tests/test_dashboard.py reads them
JSON_RPC = ["/mcp"]  # the MCP SDK's transport: tests/test_mcp_server.py speaks it with the SDK's client


# --- the document, without a server ----------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi.document()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_route_is_in_the_openapi_document() -> None:
    app = create_app(GatewayState(Config.from_env({})))
    paths = openapi.document()["paths"]
    routes = [route for route in app.routes if isinstance(route, Route)]
    assert routes
    for route in routes:
        assert route.path in paths, f"{route.path} is not in /openapi.json"
        methods = (route.methods or set()) - {"HEAD"}
        assert methods, route.path
        for method in methods:
            assert method.lower() in paths[route.path], f"{method} {route.path} is not in /openapi.json"


def test_every_operation_of_the_document_is_a_route() -> None:
    app = create_app(GatewayState(Config.from_env({})))
    routes = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
    }
    for path, item in openapi.document()["paths"].items():
        for method in item:
            assert (method.upper(), path) in routes, f"{method.upper()} {path} is documented but not routed"


def test_every_reference_in_the_document_resolves() -> None:
    document = openapi.document()
    schemas = document["components"]["schemas"]

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = set(refs(document))
    assert found
    for ref in found:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, f"{ref} names no schema"


def test_only_the_probes_and_the_dashboards_files_answer_without_a_token() -> None:
    document = openapi.document()
    assert {"bearerAuth", "basicAuth"} <= set(document["components"]["securitySchemes"])
    assert document["security"] == [{"bearerAuth": []}, {"basicAuth": []}]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if path in ("/health", "/ready", *dashboard.PATHS):  # probes; the page and its files
                assert operation["security"] == [], path
                assert "401" not in operation["responses"], path
            else:
                assert "security" not in operation, f"{method} {path}"
                assert "401" in operation["responses"], f"{method} {path}"


def test_post_run_declares_its_bodies_and_the_overload_answer() -> None:
    run = openapi.document()["paths"]["/run"]["post"]
    assert (
        run["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/RunBody"
    )
    assert {p["name"] for p in run["parameters"]} == {
        "async_mode",
        "wait",
        "X-Correlation-ID",
        "Idempotency-Key",
    }
    assert set(run["responses"]) == {"200", "202", "400", "401", "413", "422", "503"}
    assert "Retry-After" in run["responses"]["503"]["headers"]
    assert "overloaded" in run["responses"]["503"]["description"]


def test_building_the_document_waits_for_the_first_request() -> None:
    """Importing the gateway loads neither the document's module nor a JSON Schema library."""
    probe = (
        "import sys, victoria.gateway.app, victoria.gateway.server; "
        "print(sorted(m for m in ('victoria.gateway.openapi', 'schemathesis', 'jsonschema', "
        "'openapi_spec_validator') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


# --- against the running system ----------------------------------------------------------------


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database() as dsn:
        yield dsn


@pytest.fixture(scope="module")
def system(start_system: Callable[..., System], database: str) -> System:
    sys_ = start_system("openapi", VICTORIA_POSTGRES_DSN=database, VICTORIA_TASK_DEADLINE=TASK_DEADLINE)
    deadline = time.monotonic() + DATABASE_WAIT
    while sys_.http.get("/runs").status_code != 200:  # the projector creates the tables first
        assert time.monotonic() < deadline, sys_.log()
        time.sleep(0.2)
    return sys_


def _within_hypothesis(node: Any) -> Any:
    """The document less string lengths over what Hypothesis can draw: negating ``maxLength:
    100000`` (a goal's limit) asks it for a string of 100,001 characters, which it refuses to try
    (``min_size is larger than Hypothesis supports``). The limit is tested on its own below."""
    if isinstance(node, dict):
        return {
            key: _within_hypothesis(value)
            for key, value in node.items()
            if not (key == "maxLength" and isinstance(value, int) and value > INTERNAL_BUFFER_SIZE)
        }
    if isinstance(node, list):
        return [_within_hypothesis(value) for value in node]
    return node


# The document the gateway serves (a test below proves it is this one); the requests go to the
# running system. Loaded here, not from the server, because schemathesis's fixture-loaded schemas
# (``schemathesis.pytest.from_fixture``) do not work with pytest 9.2.
api_schema: OpenApiSchema = schemathesis.openapi.from_dict(
    _within_hypothesis(openapi.document()),
    config=SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "request-timeout": REQUEST_TIMEOUT,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
        }
    ),
).exclude(path=[*NEVER_ENDING, *JSON_RPC])  # type: ignore[assignment]  # exclude is typed as BaseSchema


@pytest.mark.e2e
@api_schema.parametrize()
@settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_route_answers_a_server_error_or_what_the_document_does_not_say(
    case: Case, system: System
) -> None:
    case.call_and_validate(base_url=system.url, checks=CHECKS)


@pytest.mark.e2e
def test_the_served_document_is_the_one_built_from_the_types(system: System) -> None:
    served = system.http.get("/openapi.json")
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("application/json")
    assert served.json() == openapi.document()


@pytest.mark.e2e
def test_a_real_tasks_answers_match_the_document(system: System) -> None:
    """The routes about one task, which generated ids only ever reach as a 404."""
    task_id = system.submit("Что ты умеешь? Ответь в двух коротких предложениях.")
    status = api_schema["/run/status/{task_id}"]["GET"].Case(path_parameters={"task_id": task_id})
    status.call_and_validate(base_url=system.url, checks=CHECKS)
    events = api_schema["/run/{task_id}/events"]["GET"].Case(path_parameters={"task_id": task_id})
    streamed = events.call_and_validate(base_url=system.url, checks=CHECKS)
    assert b"task_completed" in streamed.content
    cancel = api_schema["/run/{task_id}/cancel"]["POST"].Case(path_parameters={"task_id": task_id})
    assert cancel.call_and_validate(base_url=system.url, checks=CHECKS).status_code == 200  # it had ended
    running = system.submit("Write a haiku about NATS")
    cancel = api_schema["/run/{task_id}/cancel"]["POST"].Case(path_parameters={"task_id": running})
    assert cancel.call_and_validate(base_url=system.url, checks=CHECKS).status_code in (200, 202)


@pytest.mark.e2e
def test_a_streamed_task_matches_the_document(system: System) -> None:
    stream = api_schema["/stream"]["POST"].Case(body={"goal": "Write a haiku about NATS", "verbose": True})
    answer = stream.call_and_validate(base_url=system.url, checks=CHECKS)
    assert b'"type":"end"' in answer.content.replace(b" ", b"")
    deadline = time.monotonic() + DATABASE_WAIT
    while not system.http.get("/runs").json()["runs"]:  # the projector writes the history a moment later
        assert time.monotonic() < deadline
        time.sleep(0.2)
    runs = api_schema["/runs"]["GET"].Case(query={"limit": 5})
    assert runs.call_and_validate(base_url=system.url, checks=CHECKS).status_code == 200


@pytest.mark.e2e
def test_a_goal_over_its_limit_is_a_422_the_document_names(system: System) -> None:
    run = api_schema["/run"]["POST"].Case(body={"goal": "x" * (MAX_GOAL + 1)}, query={"async_mode": True})
    refused = run.call_and_validate(base_url=system.url, checks=CHECKS)
    assert refused.status_code == 422 and refused.json()["field"] == "goal"
    assert (
        openapi.document()["components"]["schemas"]["RunBody"]["properties"]["goal"]["anyOf"][0]["maxLength"]
        == MAX_GOAL
    )


NUL_CURSOR = base64.urlsafe_b64encode(b"2024-01-01T00:00:00+00:00|\x00").decode()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("method", "path", "fields", "status"),
    [
        ("GET", "/runs", {"query": {"limit": "²"}}, 422),  # was a 500: int() refuses what isdigit() takes
        ("GET", "/runs", {"query": {"project": "\x00"}}, 422),  # was a 503: PostgreSQL text holds no NUL
        ("GET", "/runs", {"query": {"cursor": NUL_CURSOR}}, 422),  # the same, through the cursor
        # was a 503: a task event over NATS's max_payload is the client's doing
        (
            "POST",
            "/run",
            {
                "query": {"async_mode": True},
                "body": {"goal": "hi", "project_context": {"notes": "x" * 2**21}},
            },
            413,
        ),
        # was a 503: a bot's version goes into every heartbeat and every /services answer
        ("POST", "/api/telegram/register", {"body": {"version": "x" * (1024 * 1024 - 20)}}, 422),
    ],
)
def test_what_once_answered_a_5xx_is_a_client_error_the_document_names(
    system: System, method: str, path: str, fields: dict[str, Any], status: int
) -> None:
    answer = api_schema[path][method].Case(**fields).call_and_validate(base_url=system.url, checks=CHECKS)
    assert answer.status_code == status, answer.text[:500]
