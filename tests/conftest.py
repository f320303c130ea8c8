from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.fakellm import FakeLLM
from tests.pg import fresh_database
from tests.system import NatsServer, System

# Property tests check what is generated, not how fast: this machine is shared and its speed moves
# by a factor of three from one hour to the next, so no deadline and no "too slow" health check.
settings.register_profile("victoria", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("victoria")


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM().start()
    yield fake
    fake.stop()


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
def system(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeLLM, workspace: Path) -> Iterator[System]:
    """The whole system, started by `victoria up`, against the fake model server (Ollama protocol)."""
    sys_ = System(
        tmp_path_factory.mktemp("data"),
        env={
            "VICTORIA_LLM_URL": fake_llm.url,
            "VICTORIA_WORKSPACE": str(workspace),
            "VICTORIA_ACK_WAIT": "5",
        },
    ).start()
    yield sys_
    sys_.close()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


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
