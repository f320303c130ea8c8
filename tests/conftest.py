from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from nats.aio.client import Client as NATS

from tests.fakellm import FakeLLM
from tests.pg import fresh_database
from tests.system import NatsServer, System, victoria_up
from victoria.runtime import connection, streams

# Property tests check what is generated, not how fast: this machine is shared and its speed moves
# by a factor of three from one hour to the next, so no deadline and no "too slow" health check.
settings.register_profile("victoria", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("victoria")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fake_llm(**options): FakeLLM's arguments (delay=..., chunk_delay=...) for the fixtures"
        " fake_llm and fake of the tests it marks",
    )
    config.addinivalue_line(
        "markers",
        "nats_streams(*configs): the streams (nats.js.api.StreamConfig) the fixture nc makes, instead"
        " of the system's; none when it names none",
    )


def fake_model_server(request: pytest.FixtureRequest) -> FakeLLM:
    """A fake model server (not started yet) with the options of the closest ``fake_llm`` marker."""
    marker = request.node.get_closest_marker("fake_llm")
    return FakeLLM(**(marker.kwargs if marker else {}))


@pytest.fixture(scope="module")
def fake_llm(request: pytest.FixtureRequest) -> Iterator[FakeLLM]:
    """The fake model server (Ollama and OpenAI protocols) that a module's tests share."""
    with fake_model_server(request) as fake:
        yield fake


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakeLLM]:
    """A fake model server of the test's own: what it counts and how it is set are this test's alone."""
    with fake_model_server(request) as llm:
        yield llm


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    for name in (
        "alpha.txt",
        "beta.md",
        "gamma.py",
        "delta.json",
        "epsilon.cfg",
        "zeta.txt",
        "eta.txt",
        "theta.txt",
        "iota.txt",
        "kappa.txt",
    ):
        (root / name).write_text(f"{name} contents\n", encoding="utf-8")
    (root / "docs").mkdir()
    (root / "docs" / "guide.md").write_text("# Guide\nПривет, мир.\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def start_system(
    tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeLLM, workspace: Path
) -> Iterator[Callable[..., System]]:
    """Starts the whole system (`victoria up`) in a data dir of its own named after ``name``, against
    the module's fake model server and workspace, with ``victoria_up``'s other arguments (settings
    as keywords: ``VICTORIA_ACK_WAIT="5"``); closes what it started at the end of the module."""
    started: list[System] = []

    def start(name: str = "data", **options: Any) -> System:
        system = victoria_up(tmp_path_factory.mktemp(name), fake_llm, workspace, **options).start()
        started.append(system)
        return system

    yield start
    for system in started:
        system.close()


@pytest.fixture(scope="module")
def system(start_system: Callable[..., System]) -> System:
    """The whole system, started by `victoria up`, against the fake model server (Ollama protocol)."""
    return start_system(VICTORIA_ACK_WAIT="5")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer, request: pytest.FixtureRequest) -> AsyncIterator[NATS]:
    """A connection to the test's own nats-server, named after its module ("fence-test" in
    test_fence.py), with the system's streams made (``streams.ensure_streams``), or the streams of the
    closest ``nats_streams`` marker instead."""
    module = request.module.__name__.rpartition(".")[2]
    client = await connection.connect(
        nats_server.url, name=module.removeprefix("test_").replace("_", "-") + "-test"
    )
    js = client.jetstream()
    marker = request.node.get_closest_marker("nats_streams")
    if marker is None:
        await streams.ensure_streams(js)
    else:
        for config in marker.args:
            await js.add_stream(config)
    yield client
    await client.close()


@pytest.fixture
async def strict_loop() -> AsyncIterator[None]:
    """Fails the test if the event loop logged an unhandled exception (asyncpg's tests do this).

    Async test modules use it with ``pytestmark = pytest.mark.usefixtures("strict_loop")``.
    """
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    await asyncio.sleep(0)
    loop.set_exception_handler(previous)
    assert not errors, f"unhandled exceptions in the event loop: {errors}"


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped after it."""
    with fresh_database() as dsn:
        yield dsn


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the test's workspace, with a secret in it: what no tool may reach."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_text("top secret\n", encoding="utf-8")
    return out
