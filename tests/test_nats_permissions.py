"""NATS users and their permissions (nats.conf): each role is refused, by the server, what it must
not do, and can do what it needs. The system runs as ``victoria up`` starts it, with one NATS user
per process; the rest of the end-to-end suite shows the whole system working under them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import api as jsapi

from tests.fakellm import FakeLLM
from tests.system import System, stream_messages, victoria_up
from victoria.errors import BrokerRefused, StreamMissing
from victoria.events import subjects
from victoria.events.codec import encode
from victoria.events.contracts import (
    FilesRequest,
    LLMResult,
    ServiceDown,
    ServicesRequest,
    TaskStage,
    TaskSubmitted,
)
from victoria.runtime import connection, credentials, fence, publish, streams
from victoria.runtime.natsserver import EmbeddedNats, config_path, find_binary

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("strict_loop")]

NOT_SUPERVISOR = ("gateway", "victoria", "veronica", "monitor", "llm-runner", "projector", "observer")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeLLM, workspace: Path) -> Iterator[System]:
    """Its own system: these tests provoke permission violations, which fail any other's close."""
    sys_ = victoria_up(tmp_path_factory.mktemp("data"), fake_llm, workspace).start()
    yield sys_
    sys_.close(violations_expected=True)


class Session:
    """One connection as one role, keeping the errors the server sends it."""

    def __init__(self, nc: NATS, errors: list[Exception]) -> None:
        self.nc = nc
        self.errors = errors

    async def refused(self, subject: str, payload: bytes = b"{}", *, what: str = "Publish") -> str:
        """Publish (or subscribe, ``what="Subscription"``) and return the server's refusal."""
        if what == "Publish":
            await self.nc.publish(subject, payload, reply=self.nc.new_inbox())
        else:
            await self.nc.subscribe(subject)
        await self.nc.flush(timeout=5)  # the server answers in order: its -ERR comes before the PONG
        expected = f'Permissions Violation for {what} to "{subject}"'
        for _ in range(50):
            said = [str(e) for e in self.errors if expected.lower() in str(e).lower()]
            if said:
                return said[0]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {expected!r} from the server; errors: {self.errors}")

    async def stored(self, subject: str, payload: bytes) -> int:
        """Publish to a stream and return the stream sequence it was stored at."""
        answer = await publish.publish(self.nc, subject, payload, {})
        assert answer.error is None, answer.error
        return answer.seq


@contextlib.asynccontextmanager
async def connected(system: System, role: str) -> AsyncIterator[Session]:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(
        system.bus_url(role),
        name=f"permissions-test:{role}",
        error_cb=on_error,
        allow_reconnect=False,
        inbox_prefix=credentials.inbox_prefix(role),  # as connection.connect does: its own inboxes only
    )
    try:
        yield Session(nc, errors)
    finally:
        await nc.close()


def new_task_id() -> str:
    return uuid.uuid4().hex


async def test_the_gateway_cannot_append_a_terminal_event_or_a_model_result(system: System) -> None:
    task_id = new_task_id()
    async with connected(system, "gateway") as gateway:
        for kind in ("completed", "failed", "cancelled", "started", "llm_request"):
            await gateway.refused(subjects.task_event(task_id, kind))
        await gateway.refused(subjects.llm_result(task_id, "plan"))
        # What it is there for: submissions and cancel requests.
        submitted = TaskSubmitted(task_id=task_id, goal="What can you do?", task_type="capabilities")
        await publish.append(gateway.nc, submitted, key="submitted")
    assert (await asyncio.to_thread(system.wait_terminal, task_id))["status"] == "completed"
    events = await asyncio.to_thread(stream_messages, system.bus_url(), f"victoria.task.*.{task_id}.>")
    kinds = [e["type"] for e in events]
    assert kinds.count("task_completed") == 1, kinds  # Victoria's, not one of the refused ones


async def test_the_llm_runner_appends_model_results_and_nothing_else_of_a_task(system: System) -> None:
    task_id = new_task_id()
    async with connected(system, "llm-runner") as runner:
        for kind in ("submitted", "completed", "failed", "cancel", "stage"):
            await runner.refused(subjects.task_event(task_id, kind))
        result = LLMResult(task_id=task_id, request_id="plan", ok=True, content="a plan")
        assert await fence.append_result(runner.nc, result)
        await runner.refused(subjects.service_event("llm-runner", "x", "up"))


async def test_victoria_writes_her_tasks_history_but_cannot_submit_or_publish_a_service_event(
    system: System,
) -> None:
    task_id = new_task_id()
    async with connected(system, "victoria") as victoria:
        await victoria.refused(subjects.task_event(task_id, "submitted"))
        await victoria.refused(subjects.task_event(task_id, "cancel"))
        await victoria.refused(subjects.llm_result(task_id, "plan"))
        await victoria.refused(subjects.service_event("veronica", "x", "down"))
        stage = TaskStage(task_id=task_id, stage="planning")
        assert await victoria.stored(subjects.task_event(task_id, "stage"), encode(stage)) > 0


async def test_only_the_monitor_and_the_supervisor_publish_service_events(system: System) -> None:
    subject = subjects.service_event("permissions-test", "x", "down")
    event = encode(ServiceDown(name="permissions-test", instance="x", reason="a test"))
    for role in NOT_SUPERVISOR:
        if role == "monitor":
            continue
        async with connected(system, role) as session:
            said = await session.refused(subject, event)
            assert subject in said
    for role in ("monitor", "supervisor"):
        async with connected(system, role) as session:
            assert await session.stored(subject, event) > 0


async def test_no_role_but_the_supervisor_creates_changes_purges_or_deletes_a_stream(system: System) -> None:
    stream = subjects.task_stream(0)
    for role in NOT_SUPERVISOR:
        async with connected(system, role) as session:
            for api in (
                "STREAM.CREATE.PERMISSIONS_TEST",
                f"STREAM.UPDATE.{stream}",
                f"STREAM.PURGE.{stream}",
                f"STREAM.DELETE.{stream}",
                f"STREAM.MSG.DELETE.{stream}",
                "STREAM.DELETE.KV_victoria_idempotency",
            ):
                await session.refused(f"$JS.API.{api}")
    async with connected(system, "gateway") as gateway:
        # Through nats-py's own API: the server drops the request, so the call times out.
        with pytest.raises(TimeoutError):
            await gateway.nc.jetstream(timeout=1.0).delete_stream(stream)
        refusal = f'permissions violation for publish to "$JS.API.STREAM.DELETE.{stream}"'
        assert refusal.lower() in str(gateway.errors).lower()
    async with connected(system, "supervisor") as supervisor:
        js = supervisor.nc.jetstream()
        assert (await js.stream_info(stream)).config.name == stream  # still there
        await js.add_stream(name="PERMISSIONS_TEST", subjects=["permissions-test.>"])
        assert await js.delete_stream("PERMISSIONS_TEST")


async def test_the_work_consumers_are_their_actors_own_and_only_the_supervisor_deletes_one(
    system: System,
) -> None:
    stream = subjects.task_stream(0)
    owners = {"victoria": "victoria", "llm-runner": "llm-runner", "projector": "projector"}
    for role in NOT_SUPERVISOR:
        if role == "observer":
            continue
        async with connected(system, role) as session:
            for durable in ("victoria", "llm-runner", "projector"):
                await session.refused(f"$JS.API.CONSUMER.DELETE.{stream}.{durable}")
                if owners.get(role) != durable:
                    await session.refused(f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}")
                    await session.refused(f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.victoria.>")
            await session.refused(f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.victoria")
            # A short-lived reading consumer of its own is still made, read and deleted.
            js = session.nc.jetstream()
            info = await js.add_consumer(stream, config=jsapi.ConsumerConfig(ack_policy=jsapi.AckPolicy.NONE))
            assert await js.delete_consumer(stream, info.name or "")
            assert (await js.consumer_info(stream, "victoria")).name == "victoria"
    async with connected(system, "supervisor") as supervisor:
        js = supervisor.nc.jetstream()
        made = await js.add_consumer(stream, config=jsapi.ConsumerConfig(durable_name="permissions-test"))
        assert await js.delete_consumer(stream, made.name or "")


async def test_every_role_but_the_observer_reads_the_streams_and_the_observer_only_subscribes(
    system: System,
) -> None:
    heartbeats = subjects.heartbeats_of("gateway")
    for role in ("supervisor", *NOT_SUPERVISOR):
        async with connected(system, role) as session:
            if role == "observer":
                await session.refused(f"$JS.API.DIRECT.GET.{subjects.HEARTBEAT_STREAM}.{heartbeats}")
                continue
            js = session.nc.jetstream()
            beat = await js.get_last_msg(subjects.HEARTBEAT_STREAM, heartbeats, direct=True)
            assert json.loads(beat.data or b"{}")["name"] == "gateway"
            sub = await js.subscribe(heartbeats, stream=subjects.HEARTBEAT_STREAM, ordered_consumer=True)
            assert (await sub.next_msg(timeout=5)).subject.startswith("victoria.heartbeat.gateway.")
            await sub.unsubscribe()
            assert session.errors == []
    async with connected(system, "observer") as observer:
        sub = await observer.nc.subscribe(subjects.ALL_HEARTBEATS)
        assert (await sub.next_msg(timeout=5)).subject.startswith("victoria.heartbeat.")
        await observer.refused(subjects.heartbeat("gateway", "x"))
        await observer.refused(subjects.task_event(new_task_id(), "cancel"))


async def test_veronica_and_the_monitor_answer_requests_and_publish_nothing_else(system: System) -> None:
    async with connected(system, "victoria") as victoria:
        reply = await victoria.nc.request(
            subjects.VERONICA_FILES, encode(FilesRequest(op="list", path=".")), timeout=10
        )
        assert json.loads(reply.data)["ok"] is True
    async with connected(system, "gateway") as gateway:
        reply = await gateway.nc.request(subjects.MONITOR_SERVICES, encode(ServicesRequest()), timeout=10)
        names = {s["name"] for s in json.loads(reply.data)["services"]}
        assert {"gateway", "victoria", "veronica", "monitor", "llm-runner"} <= names
    async with connected(system, "veronica") as veronica:
        await veronica.refused("_INBOX.not-a-request-of-mine")  # answers only what she was asked
        await veronica.refused(subjects.task_event(new_task_id(), "completed"))
        await veronica.refused(subjects.MONITOR_SERVICES)
    async with connected(system, "projector") as projector:
        await projector.refused(subjects.task_event(new_task_id(), "completed"))
        await projector.refused(subjects.dead_letter_task(new_task_id()))


async def test_a_role_cannot_subscribe_to_what_it_does_not_follow(system: System) -> None:
    async with connected(system, "llm-runner") as runner:
        await runner.refused(subjects.VERONICA_FILES, what="Subscription")
    async with connected(system, "gateway") as gateway:
        await gateway.refused(subjects.ALL_SERVICE_EVENTS, what="Subscription")
        # Nobody reads another's replies (Veronica's file contents, JetStream's acknowledgements).
        await gateway.refused("_INBOX.>", what="Subscription")
        await gateway.refused("_INBOX.victoria.>", what="Subscription")


async def test_an_anonymous_connection_or_a_wrong_password_is_refused(system: System) -> None:
    url = credentials.without_credentials(system.bus_url())
    for attempt in (url, credentials.with_user(url, "gateway", "not-the-password")):
        nc = NATS()
        with pytest.raises(nats.errors.Error, match=r"[Aa]uthorization"):
            await nc.connect(attempt, allow_reconnect=False, connect_timeout=5)
        await nc.close()  # nats-py leaves the refused socket open
    with pytest.raises(BrokerRefused, match="refused no user: authorization violation"):
        await connection.connect(url, name="anonymous", connect_timeout=5)


def test_the_monitor_stores_one_started_event_per_process(system: System) -> None:
    pids = {entry["name"]: entry["pid"] for entry in system.services() if entry["status"] == "up"}
    started = stream_messages(system.bus_url(), "victoria.svc.*.*.started")
    for name in ("gateway", "victoria", "veronica", "monitor", "llm-runner"):
        mine = [e for e in started if e["name"] == name]
        assert [e["pid"] for e in mine] == [pids[name]], (name, mine)
        assert mine[0]["type"] == "service_started"


def test_the_credentials_file_is_private_made_once_and_each_child_gets_only_its_own_password(
    system: System,
) -> None:
    path = system.data_dir / credentials.FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = json.loads(path.read_text())
    assert sorted(users) == sorted(credentials.ROLES)
    assert len(set(users.values())) == len(users)
    log = system.log()
    assert not any(password in log for password in users.values())
    # The environment of each child: its own user and password, no other.
    for pid in (system.pid_of("gateway"), system.pid_of("llm-runner")):
        environ = dict(
            item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
        )
        role = environ["VICTORIA_NATS_USER"]
        assert environ["VICTORIA_NATS_PASSWORD"] == users[role]
        others = [r for r in users if r != role]
        assert not any(users[r] in environ.values() for r in others)
        assert not any(credentials.is_password_variable(k) for k in environ)


def test_the_credentials_are_kept_across_restarts(tmp_path: Path, fake_llm: FakeLLM) -> None:
    system = victoria_up(tmp_path / "data", fake_llm).start()
    try:
        path = system.data_dir / credentials.FILE_NAME
        first = path.read_text()
        system.stop()
        system.start()
        assert path.read_text() == first
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        body = system.run({"goal": "What can you do?", "task_type": "capabilities"})
        assert body["status"] == "completed", body
    finally:
        system.close()


async def test_a_process_that_may_not_create_streams_names_the_missing_one(tmp_path: Path) -> None:
    users = credentials.load_or_create(tmp_path / credentials.FILE_NAME)
    server = EmbeddedNats(tmp_path / "nats", environment=credentials.server_environment(users))
    url = await server.start()
    try:
        nc = await connection.connect(url, name="no-streams", user="veronica", password=users["veronica"])
        try:
            with pytest.raises(StreamMissing, match=r"VICTORIA_TASKS_0 is missing.*victoria up"):
                await streams.ensure_streams(nc.jetstream(timeout=1.0))
        finally:
            await nc.close()
        nc = await connection.connect(url, name="supervisor", user="supervisor", password=users["supervisor"])
        try:
            await streams.ensure_streams(nc.jetstream())
        finally:
            await nc.close()
        nc = await connection.connect(url, name="again", user="veronica", password=users["veronica"])
        try:
            await streams.ensure_streams(nc.jetstream(timeout=1.0))  # only reads, now that they exist
        finally:
            await nc.close()
    finally:
        await server.stop()


def test_an_external_nats_server_run_with_victorias_config_and_nats_env_runs_the_system(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VICTORIA_", "NATS_"))}
    out = subprocess.run(
        [sys.executable, "-m", "victoria", "nats-env", "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in out.stdout.splitlines()
        if line.startswith("export ")
    )
    assert sorted(exports) == sorted(credentials.password_variable(r) for r in credentials.ROLES)

    # As an operator would: nats-server -c <victoria's nats.conf>, the variables in its environment.
    store = tmp_path / "external"
    (store / "ports").mkdir(parents=True)
    binary = find_binary()
    argv = [
        str(binary),
        "-c",
        str(config_path()),
        "-sd",
        str(store / "js"),
        "-l",
        str(store / "nats-server.log"),
    ]
    server = subprocess.Popen(
        [*argv, "--ports_file_dir", str(store / "ports")],
        env={**env, **exports},
        stdin=subprocess.DEVNULL,
    )
    try:
        ports = store / "ports" / f"{binary.name}_{server.pid}.ports"
        deadline = time.monotonic() + 10
        while not ports.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        url = json.loads(ports.read_text())["nats"][0]
        system = victoria_up(data_dir, fake_llm, nats_url=url).start()
        try:
            body = system.run({"goal": "Write a haiku", "task_type": "agent"})
            assert body["status"] == "completed", body
            assert "using NATS at" in system.log()
        finally:
            system.close()
        assert not (data_dir / "jetstream").exists()  # the external server's store, not an embedded one
    finally:
        server.terminate()
        server.wait(10)
    assert "Violation" not in (store / "nats-server.log").read_text()
