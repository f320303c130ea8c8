"""Model-aware scheduling: the rules alone (no NATS), then through real runners against fake servers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakellm import FakeLLM
from tests.system import System, stream_messages, victoria_up
from victoria.actors.llm_runner.scheduler import Lease, Scheduler
from victoria.actors.llm_runner.servers import Registry, _Model
from victoria.events.contracts import ModelInfo, ModelServerInfo
from victoria.gateway.models import merge
from victoria.models import table
from victoria.runtime.modelservers import ModelServer, load_file, parse_urls

A = ModelServer(url="http://a:1")
B = ModelServer(url="http://b:2")


def scheduler(*servers: ModelServer, max_wait: float = 30.0, grace: float = 0.05) -> Scheduler:
    s = Scheduler(servers or (A,), max_wait=max_wait, concurrency=64, grace=grace)
    s.start()
    return s


@pytest.mark.usefixtures("strict_loop")
async def test_the_llm_url_list_names_each_servers_protocol(tmp_path: object) -> None:
    servers = parse_urls("http://a:1, openai:http://b:2/", "ollama")
    assert [(s.url, s.api) for s in servers] == [("http://a:1", "ollama"), ("http://b:2", "openai")]
    with pytest.raises(ValueError):
        parse_urls("http://a:1,ftp://b", "ollama")


@pytest.mark.usefixtures("strict_loop")
async def test_the_models_file_gives_models_limits_and_keep_alive(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "models.toml"  # type: ignore[operator]
    path.write_text(
        '[[server]]\nurl = "http://studio:11434"\nmax_loaded = 2\nparallel = 3\nmodels = ["q"]\n'
        'keep_alive = "1h"\n[server.limits]\n"q" = 1\n'
    )
    (server,) = load_file(path, "ollama")
    assert (server.max_loaded, server.models, server.keep_alive) == (2, ("q",), "1h")
    assert server.limit_for("q") == 1 and server.limit_for("other") == 3


@pytest.mark.usefixtures("strict_loop")
async def test_calls_for_the_loaded_model_go_first_and_the_switch_happens_once() -> None:
    s = scheduler()
    first = await s.acquire("m1")
    waiting = asyncio.ensure_future(s.acquire("m2"))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    # m1 still has work: more of its calls go at once, ahead of the waiting m2 call.
    second = await asyncio.wait_for(s.acquire("m1"), 0.5)
    s.release(first)
    await asyncio.sleep(0.1)
    assert not waiting.done()
    s.release(second)
    lease = await asyncio.wait_for(waiting, 1.0)  # m1 drained: the server switches, once
    assert lease.slot.active == ["m2"]
    s.release(lease)
    await s.stop()


@pytest.mark.usefixtures("strict_loop")
async def test_a_call_that_waited_max_wait_gets_its_model_while_the_other_keeps_coming() -> None:
    s = scheduler(max_wait=0.3)
    started = time.monotonic()
    held: list[Lease] = [await s.acquire("busy")]

    async def keep_busy() -> None:
        while True:  # the busy model never runs out of work: a new call as each ends
            await asyncio.sleep(0.01)
            s.release(held.pop(0))
            held.append(await s.acquire("busy"))

    busy = asyncio.ensure_future(keep_busy())
    lone = await asyncio.wait_for(s.acquire("lone"), 2.0)
    waited = time.monotonic() - started
    assert 0.3 <= waited < 1.0
    assert lone.slot.active == ["lone"]
    busy.cancel()
    await asyncio.gather(busy, return_exceptions=True)
    s.release(lone)
    await s.stop()


@pytest.mark.usefixtures("strict_loop")
async def test_a_call_goes_to_the_server_that_has_its_model_loaded() -> None:
    s = scheduler(A, B)
    s.slots[B.key].loaded = ["m"]
    lease = await s.acquire("m")
    assert lease.slot.spec is B
    s.release(lease)
    await s.stop()


@pytest.mark.usefixtures("strict_loop")
async def test_calls_waiting_for_a_server_that_goes_down_go_to_another_with_their_model() -> None:
    one_at_a_time = ModelServer(url="http://c:3", parallel=1)
    s = scheduler(A, one_at_a_time)
    for slot in s.slots.values():
        slot.models = {"m1", "m2"}
    on_a = await s.acquire("m1")
    on_c = await s.acquire("m2")
    assert (on_a.slot.spec, on_c.slot.spec) == (A, one_at_a_time)
    queued = asyncio.ensure_future(s.acquire("m2"))  # behind the one call C takes at a time
    await asyncio.sleep(0.02)
    assert not queued.done()
    s.server_down(s.slots[one_at_a_time.key])
    moved = asyncio.ensure_future(s.move(on_c, exclude=frozenset({one_at_a_time.key})))
    s.release(on_a)  # A's m1 work is done: A takes m2
    lease = await asyncio.wait_for(queued, 1.0)
    await asyncio.wait_for(moved, 1.0)
    assert lease.slot.spec is A and on_c.slot.spec is A
    await s.stop()


# --- through real runners --------------------------------------------------------------------------
MODELS = ["m-a", "m-b"]
ALSO = "m-c"  # listed by the servers, loaded by neither at first


def swapping_fake(load_time: float = 0.3, delay: float = 0.05) -> FakeLLM:
    fake = FakeLLM(delay=delay).start()
    fake.models = [*MODELS, ALSO]
    fake.load_time = load_time
    return fake


@pytest.fixture(scope="module")
def two_servers() -> Iterator[tuple[FakeLLM, FakeLLM]]:
    first, second = swapping_fake(), swapping_fake()
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture(scope="module")
def routed(
    tmp_path_factory: pytest.TempPathFactory, two_servers: tuple[FakeLLM, FakeLLM], workspace: Path
) -> Iterator[System]:
    first, second = two_servers
    first.loaded, second.loaded = "m-a", "m-b"
    with victoria_up(
        tmp_path_factory.mktemp("data"), f"{first.url},{second.url}", workspace, VICTORIA_MODEL_MAX_WAIT="5"
    ).start() as sys_:
        yield sys_


def model_servers(system: System) -> list[dict[str, Any]]:
    response = system.http.get("/services")
    assert response.status_code == 200, response.text
    servers: list[dict[str, Any]] = response.json()["model_servers"]
    return servers


@pytest.mark.e2e
def test_a_task_goes_to_the_server_that_has_its_model_loaded(
    routed: System, two_servers: tuple[FakeLLM, FakeLLM]
) -> None:
    first, second = two_servers
    routed.wait_for(
        lambda: sum(bool(s["loaded"]) for s in model_servers(routed)) == 2, what="both servers looked at"
    )
    for model, server in (("m-b", second), ("m-a", first)):
        before = list(server.served)
        body = routed.run({"goal": f"Say hello with {model}", "task_type": "agent", "model": model})
        assert body["status"] == "completed", body
        assert server.served[len(before) :] == [model] * 3, (first.served, second.served, body)
    assert first.swaps == second.swaps == 0
    assert "m-b" not in first.served and "m-a" not in second.served
    listed = {s["url"]: s for s in model_servers(routed)}
    assert listed[first.url]["loaded"] == ["m-a"] and listed[second.url]["loaded"] == ["m-b"]
    metrics = routed.http.get("/metrics").text
    assert f'victoria_model_swaps_total{{server="{first.url}"}} 0' in metrics


@pytest.mark.e2e
def test_calls_of_a_server_that_goes_down_go_to_another_server_with_their_model(
    routed: System, two_servers: tuple[FakeLLM, FakeLLM]
) -> None:
    first, second = two_servers
    first.delay = second.delay = 0.3
    try:
        ids = [routed.submit(f"Count to {i}", task_type="agent", model="m-a") for i in range(4)]
        routed.wait_for(lambda: first.served.count("m-a") >= 3, what="the first server answering")
        first.down = True  # mid-queue: the rest of the calls find it gone
        for task_id in ids:
            assert routed.wait_terminal(task_id, timeout=60)["status"] == "completed"
        assert "m-a" in second.served
    finally:
        first.down = False
        first.delay = second.delay = 0.05


@pytest.mark.e2e
def test_a_call_waiting_for_its_model_shows_waiting_for_model_with_its_place(
    routed: System, two_servers: tuple[FakeLLM, FakeLLM]
) -> None:
    first, second = two_servers
    routed.wait_for(lambda: all(s["status"] == "up" for s in model_servers(routed)), what="both up")
    first.delay = second.delay = 0.5
    try:
        busy = [routed.submit(f"Keep busy {i}", task_type="agent", model=MODELS[i % 2]) for i in range(6)]
        time.sleep(0.3)
        # Both servers hold m-a or m-b and have work; a third model waits.
        lone = routed.submit("The other model", task_type="agent", model=ALSO)
        seen = routed.wait_for(
            lambda: (s := routed.status(lone))["stage"] == "waiting_for_model" and s, what="waiting_for_model"
        )
        assert seen["model_wait"]["model"] == ALSO and seen["model_wait"]["place"] == 1
        for task_id in [*busy, lone]:
            assert routed.wait_terminal(task_id, timeout=60)["status"] == "completed"
    finally:
        first.delay = second.delay = 0.05


@pytest.mark.e2e
def test_two_runner_instances_do_not_swap_a_server_against_each_other(
    tmp_path_factory: pytest.TempPathFactory, workspace: Path
) -> None:
    fake = swapping_fake(load_time=0.3, delay=0.15)
    sys_ = victoria_up(tmp_path_factory.mktemp("data"), fake, workspace).start()
    second: subprocess.Popen[bytes] | None = None
    try:
        # The first instance is busy with m-a when the second one starts ...
        ids = [sys_.submit(f"Early {i}", task_type="agent", model="m-a") for i in range(4)]
        sys_.wait_for(lambda: fake.served, what="the first call answered")
        second = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "victoria",
                "actor",
                "llm-runner",
                "--nats-url",
                sys_.bus_url("llm-runner"),
            ],
            env={**sys_.env, "VICTORIA_INSTANCE": "second-runner"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sys_.wait_for(
            lambda: sum(s["name"] == "llm-runner" and s["status"] == "up" for s in sys_.services()) == 2,
            what="two runner instances",
        )
        # ... and calls for both models come to both instances. Deciding apart, the second
        # would send its m-b calls at once, and the server would swap back and forth.
        ids += [sys_.submit(f"Interleaved {i}", task_type="agent", model=MODELS[i % 2]) for i in range(12)]
        for task_id in ids:
            assert sys_.wait_terminal(task_id, timeout=90)["status"] == "completed"
        instances = Counter(call["instance"] for call in _answering_instances(sys_))
        assert len(instances) == 2, instances  # both instances answered calls
        assert fake.swaps <= 3, (fake.swaps, instances, "".join(model[-1] for model in fake.served))
    finally:
        if second is not None:
            second.terminate()
            second.wait(10)
        sys_.close()
        fake.stop()


def _answering_instances(system: System) -> list[dict[str, Any]]:
    return [
        m for m in stream_messages(system.bus_url(), "victoria.task.*.*.llm_result.*") if m.get("instance")
    ]


def test_keep_alive_follows_the_models_size_and_the_models_file() -> None:
    big, small = ModelServer(url="http://a:1"), ModelServer(url="http://b:2", keep_alive="2h")
    registry = Registry(Scheduler((big, small), max_wait=30, concurrency=4), instance="i")
    slot, other = registry.scheduler.slots[big.key], registry.scheduler.slots[small.key]
    for name, size, params in (("qwen3:30b", 18_600_000_000, "30.5B"), ("llama3.2", 2_000_000_000, "3.2B")):
        model = registry.models[big.key].setdefault(name, _Model())
        model.size_bytes, model.parameter_size = size, params
    assert registry.keep_alive(slot, "qwen3:30b") == "30m"
    assert registry.keep_alive(slot, "llama3.2") == "5m"
    assert registry.keep_alive(slot, "never-seen") is None  # Ollama's own default then
    assert registry.keep_alive(other, "anything") == "2h"


def test_victoria_models_prints_each_model_where_it_is_and_its_latency() -> None:
    infos = [
        ModelServerInfo(
            url="http://studio:11434",
            api="ollama",
            status="up",
            models=[
                ModelInfo(
                    name="qwen3:30b", loaded=True, calls=3, ttft_s=0.41, tokens_per_s=38.2, context=8192
                )
            ],
            loaded=["qwen3:30b"],
            loaded_source="server",
            swaps=2,
            instance=instance,
            at=at,
        )
        for instance, at in (("r1", 1.0), ("r2", 2.0))
    ]
    (server,) = merge(infos)
    assert server["swaps"] == 4 and server["instances"] == ["r1", "r2"]
    lines = table([server])
    assert lines[0].split() == ["MODEL", "SERVER", "LOADED", "CONTEXT", "TTFT", "TOKENS/S", "CALLS"]
    assert lines[1].split() == ["qwen3:30b", "http://studio:11434", "yes", "8192", "0.41s", "38.2", "3"]
    assert lines[-1] == "http://studio:11434: ollama, up, loaded: qwen3:30b, 4 swaps"


@pytest.mark.usefixtures("strict_loop")
async def test_a_call_for_a_model_no_server_has_goes_at_once_and_loads_nothing() -> None:
    s = scheduler(A)
    s.slots[A.key].models = {"m1"}
    busy = await s.acquire("m1")
    lease = await asyncio.wait_for(s.acquire("nowhere"), 0.5)  # Ollama answers "not found" at once
    assert lease.slot.active == ["m1"]
    s.release(lease)
    s.release(busy)
    await s.stop()
