"""NATS users and their permissions (nats-users.conf): each role is refused, by the server, what it
must not do, and can do what it needs. The system runs as ``victoria up`` starts it, with one NATS
user per process; the rest of the end-to-end suite shows the whole system working under them.

docs/security.md has the table of what each role may do. ``REFUSALS`` is its refused cells, each
tried with the role's own credentials: they are made from the facts below (what each role reads,
writes and subscribes to, the work consumers it owns), so that no cell is left out. The task
streams stand for one another here (``TASKS``); a test of the file checks that every subject naming
one of them is there for each of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, get_args

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import api as jsapi
from nats.js.errors import KeyNotFoundError, NotFoundError

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
from victoria.runtime import connection, credentials, fence, publish, reads, streams
from victoria.runtime.images import ImageStore
from victoria.runtime.memory import Exchange, KvMemory
from victoria.runtime.natsserver import EmbeddedNats, config_path, find_binary

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("strict_loop")]

NOT_SUPERVISOR: Final = tuple(role for role in credentials.ROLES if role != "supervisor")
WORK_CONSUMERS: Final = ("victoria", "llm-runner", "projector", "veronica")
"""The durable work consumers, one per task stream, each named after the role whose actor makes it
and alone pulls from it."""


def _a_task_in_shard(shard: int) -> str:
    return next(
        f"permissions-test-{n}" for n in range(10_000) if subjects.shard_of(f"permissions-test-{n}") == shard
    )


TASK_ID: Final = _a_task_in_shard(0)
TASKS: Final = subjects.task_stream(0)
IDEMPOTENCY: Final = subjects.bucket_stream(subjects.IDEMPOTENCY_BUCKET)
SESSIONS: Final = subjects.bucket_stream(subjects.SESSIONS_BUCKET)
MODELS: Final = subjects.bucket_stream(subjects.MODELS_BUCKET)
MCP: Final = subjects.bucket_stream(subjects.MCP_BUCKET)
STREAMS: Final = {
    # stream: (a filter of it, one of its subjects)
    TASKS: (subjects.shard_events(0), subjects.task_event(TASK_ID, "submitted")),
    subjects.SERVICE_STREAM: (subjects.ALL_SERVICE_EVENTS, subjects.service_event("gateway", "x", "up")),
    subjects.HEARTBEAT_STREAM: (subjects.ALL_HEARTBEATS, subjects.heartbeat("gateway", "x")),
    subjects.LOG_STREAM: (subjects.ALL_LOGS, subjects.log("gateway", "info")),
    subjects.DLQ_STREAM: (subjects.ALL_DEAD_LETTERS, subjects.dead_letter_bad("x")),
    **{subjects.bucket_stream(b): (f"$KV.{b}.>", f"$KV.{b}.k") for b in subjects.BUCKETS},
    subjects.IMAGES_STREAM: (f"$O.{subjects.IMAGES_BUCKET}.>", f"$O.{subjects.IMAGES_BUCKET}.M.k"),
}

READ_WAYS: Final = {
    "nameless": "make a consumer without a name in the subject on",
    "named": "make a named consumer on",
    "durable": "make a durable consumer on",
    "direct": "direct-get a message by sequence from",
    "direct_last": "direct-get the last message of a subject from",
    "get": "get a message of",
}


def reading(way: str, stream: str) -> str:
    """The subject of one way of reading ``stream`` (``READ_WAYS``)."""
    filter_subject, subject = STREAMS[stream]
    return {
        "nameless": f"$JS.API.CONSUMER.CREATE.{stream}",
        "named": f"$JS.API.CONSUMER.CREATE.{stream}.permissions-test.{filter_subject}",
        "durable": f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.permissions-test",
        "direct": f"$JS.API.DIRECT.GET.{stream}",
        "direct_last": f"$JS.API.DIRECT.GET.{stream}.{subject}",
        "get": f"$JS.API.STREAM.MSG.GET.{stream}",
    }[way]


READS: Final[dict[str, dict[str, set[str]]]] = {
    # role: {stream: the ways it reads it}; nothing else, and no stream not named.
    "gateway": {
        TASKS: {"nameless", "named", "direct_last"},  # ordered consumers (status, live events), scans
        subjects.LOG_STREAM: {"named"},  # a task's logs
        IDEMPOTENCY: {"get"},
        SESSIONS: {"get"},
        MODELS: {"nameless", "get"},  # the keys, then each record
        MCP: {"nameless", "get"},  # the MCP servers' tools, for /tools
        subjects.IMAGES_STREAM: {"get"},  # whether an image is stored already
        # and the Telegram bot's last heartbeat: a direct get of its subjects only
    },
    "victoria": {TASKS: {"named", "direct", "direct_last"}, SESSIONS: {"get"}, MCP: {"nameless", "get"}},
    "veronica": {TASKS: {"direct_last"}, MCP: {"get"}},  # a task's history before a tool call
    "monitor": {
        subjects.HEARTBEAT_STREAM: {"nameless"},
        subjects.SERVICE_STREAM: {"direct_last"},
        MODELS: {"nameless", "get"},
        MCP: {"nameless", "get"},
    },
    "llm-runner": {
        TASKS: {"direct_last"},
        MODELS: {"nameless", "get"},
        subjects.IMAGES_STREAM: {"nameless", "get"},
    },
}
"""Besides its own work consumer. The projector and the observer read no stream."""

WRITES: Final[list[tuple[str, str, set[str]]]] = [
    # (what, a subject of it, the roles but the supervisor that may publish it)
    *(
        (f"append a task's {kind} event", subjects.task_event(TASK_ID, kind), {writer})
        for kind in get_args(subjects.TaskKind)
        for writer in ["gateway" if kind in ("submitted", "cancel") else "victoria"]
    ),
    ("append a model result", subjects.llm_result(TASK_ID, "plan"), {"llm-runner"}),
    ("say a model result is stored", subjects.result_stored(TASK_ID, "plan"), {"llm-runner", "veronica"}),
    ("claim a tool call", subjects.tool_claim(TASK_ID, "call-1"), {"veronica", "victoria"}),
    ("append a tool call's outcome", subjects.tool_outcome(TASK_ID, "call-1"), {"veronica", "victoria"}),
    ("decide an approval", subjects.approval(TASK_ID, "call-1"), {"gateway", "victoria"}),
    ("say an approval is decided", subjects.approval_decided(TASK_ID, "call-1"), {"gateway"}),
    ("publish a task's model tokens", subjects.tokens(TASK_ID), {"llm-runner"}),
    ("publish that a task's model call waits", subjects.progress(TASK_ID), {"llm-runner"}),
    ("publish a service event", subjects.service_event("permissions-test", "x", "down"), {"monitor"}),
    ("dead-letter a task", subjects.dead_letter_task(TASK_ID), {"victoria"}),
    ("dead-letter a message of the projector", subjects.dead_letter_bad("projector"), set()),
    ("ask Veronica for files", subjects.VERONICA_FILES, {"victoria"}),
    ("ask the monitor for the services", subjects.MONITOR_SERVICES, {"gateway"}),
    ("ask the runners who calls the model for a request", subjects.RUNNER_HOLDING, {"llm-runner"}),
    ("write an idempotency key", f"$KV.{subjects.IDEMPOTENCY_BUCKET}.k", {"gateway"}),
    ("write a session's memory", f"$KV.{subjects.SESSIONS_BUCKET}.k", {"victoria"}),
    ("write a model server's record", f"$KV.{subjects.MODELS_BUCKET}.k", {"llm-runner"}),
    ("write an MCP server's record", f"$KV.{subjects.MCP_BUCKET}.k", {"veronica"}),
    ("store an image", f"$O.{subjects.IMAGES_BUCKET}.C.k", {"gateway"}),
    ("purge the images", f"$JS.API.STREAM.PURGE.{subjects.IMAGES_STREAM}", {"gateway"}),
    ("beat for the Telegram bot", subjects.heartbeat(subjects.TELEGRAM, "x"), {"gateway"}),
    ("publish to the supervisor's inbox", "_INBOX.supervisor.x", set()),
    ("ask for JetStream's account information", "$JS.API.INFO", set()),
    ("list the streams", "$JS.API.STREAM.NAMES", {"llm-runner"}),  # nats-py finds an image's stream so
    ("make a stream", "$JS.API.STREAM.CREATE.PERMISSIONS_TEST", set()),
    *(
        (f"{change} {stream}", f"$JS.API.STREAM.{api}.{stream}", set())
        for stream in STREAMS
        for change, api in (("change", "UPDATE"), ("delete", "DELETE"), ("delete a message of", "MSG.DELETE"))
    ),
    *(
        (f"purge {stream}", f"$JS.API.STREAM.PURGE.{stream}", set())
        for stream in STREAMS
        if stream != subjects.IMAGES_STREAM
    ),
]

SUBSCRIPTIONS: Final[list[tuple[str, str, str, set[str]]]] = [
    # (what, subject, queue group, the roles but the supervisor that may subscribe so)
    ("read the supervisor's replies", "_INBOX.supervisor.>", "", set()),
    ("read every reply", "_INBOX.>", "", set()),
    ("follow every task event", subjects.ALL_TASK_EVENTS, "", {"observer"}),
    ("follow the service events", subjects.ALL_SERVICE_EVENTS, "", {"monitor", "observer"}),
    ("hear Veronica's file requests", subjects.VERONICA_FILES, "", {"veronica", "observer"}),
    ("take Veronica's file requests", subjects.VERONICA_FILES, "veronica", {"veronica"}),
    ("take the monitor's requests", subjects.MONITOR_SERVICES, "monitor", {"monitor"}),
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """One cell of the table that the server must refuse: ``role`` publishes to ``subject`` (or
    subscribes to it, in ``queue`` if given)."""

    role: str
    tries: str
    subject: str
    subscribe: bool = False
    queue: str = ""

    def __str__(self) -> str:
        return f"{self.role} may not {self.tries}"


def _refusals() -> list[Refusal]:
    cells: list[Refusal] = []
    for role in NOT_SUPERVISOR:
        reads_ = READS.get(role, {})
        for stream in STREAMS:
            for way, what in READ_WAYS.items():
                if way not in reads_.get(stream, set()):
                    cells.append(Refusal(role, f"{what} {stream}", reading(way, stream)))
        for durable in WORK_CONSUMERS:
            owned = {
                f"pull from {durable}'s work consumer": f"$JS.API.CONSUMER.MSG.NEXT.{TASKS}.{durable}",
                f"acknowledge a message of {durable}'s work consumer": f"$JS.ACK.{TASKS}.{durable}.1.1.1.0.0",
                f"make {durable}'s work consumer": f"$JS.API.CONSUMER.DURABLE.CREATE.{TASKS}.{durable}",
            }
            anyone = {
                f"make {durable}'s work consumer by name": (
                    f"$JS.API.CONSUMER.CREATE.{TASKS}.{durable}.{subjects.shard_events(0)}"
                ),
                f"delete {durable}'s work consumer": f"$JS.API.CONSUMER.DELETE.{TASKS}.{durable}",
                f"pause {durable}'s work consumer": f"$JS.API.CONSUMER.PAUSE.{TASKS}.{durable}",
                f"move the leader of {durable}'s work consumer": (
                    f"$JS.API.CONSUMER.LEADER.STEPDOWN.{TASKS}.{durable}"
                ),
            }
            tries = anyone if role == durable else owned | anyone
            cells += [Refusal(role, what, subject) for what, subject in tries.items()]
        cells += [Refusal(role, what, subject) for what, subject, writers in WRITES if role not in writers]
        other = NOT_SUPERVISOR[(NOT_SUPERVISOR.index(role) + 1) % len(NOT_SUPERVISOR)]
        cells.append(Refusal(role, f"beat as {other}", subjects.heartbeat(other, "x")))
        cells.append(Refusal(role, f"log as {other}", subjects.log(other, "info")))
        cells += [
            Refusal(role, what, subject, subscribe=True, queue=queue)
            for what, subject, queue, readers in SUBSCRIPTIONS
            if role not in readers
        ]
    return cells


REFUSALS: Final = _refusals()


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

    async def refused(
        self, subject: str, payload: bytes = b"{}", *, subscribe: bool = False, queue: str = ""
    ) -> str:
        """Publish (or subscribe, in ``queue`` if given) and return the server's refusal."""
        if subscribe:
            await self.nc.subscribe(subject, queue=queue)
        else:
            await self.nc.publish(subject, payload, reply=self.nc.new_inbox())
        await self.nc.flush(timeout=5)  # the server answers in order: its -ERR comes before the PONG
        what = "Subscription" if subscribe else "Publish"
        expected = f'Permissions Violation for {what} to "{subject}"'.lower()
        for _ in range(50):
            said = [str(e) for e in self.errors if expected in str(e).lower()]
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


def role_blocks() -> dict[str, str]:
    """Each role's permissions in nats-users.conf: role -> the text of its block."""
    text = config_path().with_name("nats-users.conf").read_text()
    blocks = re.findall(r"^(\w+)_PERMISSIONS = \{\n(.*?)^\}", text, re.M | re.S)
    return {name.lower().replace("_", "-"): body for name, body in blocks}


def test_every_subject_naming_a_task_stream_is_there_for_each_task_stream() -> None:
    blocks = role_blocks()
    assert sorted(blocks) == sorted(credentials.ROLES)
    named = re.compile(r"VICTORIA_TASKS_\w+")
    for role, block in blocks.items():
        granted = set(re.findall(r'"([^"]+)"', block))
        for subject in granted:
            for stream in named.findall(subject):
                assert stream in subjects.TASK_STREAMS, (role, subject)
                for other in subjects.TASK_STREAMS:
                    assert subject.replace(stream, other) in granted, (role, subject, other)


def test_the_table_refuses_each_role_at_least_something_of_every_kind() -> None:
    for role in NOT_SUPERVISOR:
        mine = [str(cell) for cell in REFUSALS if cell.role == role]
        for kind in ("make a consumer", "direct-get", "pull from", "acknowledge", "delete ", "append a"):
            assert any(kind in cell for cell in mine), (role, kind)
    assert len({str(cell) for cell in REFUSALS}) == len(REFUSALS)


@pytest.mark.parametrize("cell", REFUSALS, ids=str)
async def test_the_server_refuses(system: System, cell: Refusal) -> None:
    async with connected(system, cell.role) as session:
        said = await session.refused(cell.subject, subscribe=cell.subscribe, queue=cell.queue)
        if cell.queue:
            assert f'using queue "{cell.queue}"' in said


async def test_the_gateway_submits_a_task_and_victoria_alone_ends_it(system: System) -> None:
    task_id = new_task_id()
    async with connected(system, "gateway") as gateway:
        submitted = TaskSubmitted(task_id=task_id, goal="What can you do?", task_type="capabilities")
        await publish.append(gateway.nc, submitted, key="submitted")
        assert gateway.errors == []
    assert (await asyncio.to_thread(system.wait_terminal, task_id))["status"] == "completed"
    events = await asyncio.to_thread(stream_messages, system.bus_url(), f"victoria.task.*.{task_id}.>")
    kinds = [e["type"] for e in events]
    assert kinds.count("task_completed") == 1, kinds


async def test_the_runner_stores_a_model_result_and_victoria_a_stage_of_a_task(system: System) -> None:
    task_id = new_task_id()
    async with connected(system, "llm-runner") as runner:
        result = LLMResult(task_id=task_id, request_id="plan", ok=True, content="a plan")
        assert await fence.append_result(runner.nc, result)
        assert runner.errors == []
    async with connected(system, "victoria") as victoria:
        stage = TaskStage(task_id=task_id, stage="planning")
        assert await victoria.stored(subjects.task_event(task_id, "stage"), encode(stage)) > 0
        assert victoria.errors == []


async def test_the_monitor_and_the_supervisor_store_service_events(system: System) -> None:
    subject = subjects.service_event("permissions-test", "x", "down")
    event = encode(ServiceDown(name="permissions-test", instance="x", reason="a test"))
    for role in ("monitor", "supervisor"):
        async with connected(system, role) as session:
            assert await session.stored(subject, event) > 0


async def test_a_stream_deletion_refused_times_out_in_nats_py_and_the_supervisor_makes_and_deletes_streams(
    system: System,
) -> None:
    stream = subjects.task_stream(0)
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


async def test_the_work_consumers_are_there_and_the_supervisor_alone_makes_and_deletes_others(
    system: System,
) -> None:
    async with connected(system, "supervisor") as supervisor:
        js = supervisor.nc.jetstream()
        for stream in subjects.TASK_STREAMS:
            for durable in ("victoria", "llm-runner"):  # the projector runs with a database only
                assert (await js.consumer_info(stream, durable)).config.durable_name == durable
        made = await js.add_consumer(TASKS, config=jsapi.ConsumerConfig(durable_name="permissions-test"))
        assert await js.delete_consumer(TASKS, made.name or "")


async def test_each_role_reads_what_its_work_needs(system: System) -> None:
    """What each process does, through the same calls, with its role's credentials."""
    task_id = _a_task_in_shard(1)
    stream = subjects.task_stream_of(task_id)
    async with connected(system, "gateway") as gateway:
        js = gateway.nc.jetstream()
        submitted = TaskSubmitted(task_id=task_id, goal="What can you do?", task_type="capabilities")
        await publish.append(gateway.nc, submitted, key="submitted")
        await asyncio.to_thread(system.wait_terminal, task_id)
        assert next(event.kind for _, event in await reads.task_events(js, task_id)) == "submitted"
        live = await js.subscribe(
            subjects.task_events(task_id),
            stream=stream,
            ordered_consumer=True,
            deliver_policy=jsapi.DeliverPolicy.ALL,
        )
        assert (await live.next_msg(timeout=5)).subject == subjects.task_event(task_id, "submitted")
        await live.unsubscribe()
        assert (await js.consumer_info(stream, "victoria")).name == "victoria"
        async with reads.Scan(js, subjects.LOG_STREAM, subjects.ALL_LOGS) as logs:
            assert logs.pending > 0
        with pytest.raises(KeyNotFoundError):
            await (await js.key_value(subjects.IDEMPOTENCY_BUCKET)).get("permissions-test")
        assert await KvMemory(js).recent("permissions-test") == []
        await reads.model_server_infos(js)
        image = await ImageStore(js).put(b"permissions-test image")
        with pytest.raises(NotFoundError):
            await js.get_last_msg(
                subjects.HEARTBEAT_STREAM, subjects.heartbeats_of(subjects.TELEGRAM), direct=True
            )
        assert gateway.errors == []
    async with connected(system, "victoria") as victoria:
        js = victoria.nc.jetstream()
        history = await reads.task_events(js, task_id)
        assert await reads.last_task_event(js, task_id, "submitted") == history[0][1]
        first = await js.get_msg(stream, seq=history[0][0], direct=True)  # as a fenced append reads
        assert first.subject == subjects.task_event(task_id, "submitted")
        exchange = Exchange(task_id=task_id, goal="g", answer="a", at=datetime.now(UTC))
        await KvMemory(js).remember("permissions-test", exchange)
        assert len(await KvMemory(js).recent("permissions-test")) == 1
        assert victoria.errors == []
    async with connected(system, "llm-runner") as runner:
        js = runner.nc.jetstream()
        last = await reads.last_history_event(js, task_id)
        assert last is not None and last[1] is not None and last[1].kind == "completed"
        assert await reads.last_llm_result(js, task_id, "plan") is None
        await reads.model_server_infos(js)
        assert await ImageStore(js).base64_of(image)
        assert runner.errors == []
    async with connected(system, "monitor") as monitor:
        js = monitor.nc.jetstream()
        beats = await js.subscribe(
            subjects.ALL_HEARTBEATS,
            stream=subjects.HEARTBEAT_STREAM,
            ordered_consumer=True,
            deliver_policy=jsapi.DeliverPolicy.LAST_PER_SUBJECT,
        )
        assert (await beats.next_msg(timeout=5)).subject.startswith("victoria.heartbeat.")
        await beats.unsubscribe()
        services = await asyncio.to_thread(system.services)
        instance = next(entry["instance"] for entry in services if entry["name"] == "gateway")
        started = await js.get_last_msg(
            subjects.SERVICE_STREAM, subjects.service_event("gateway", instance, "started"), direct=True
        )
        assert json.loads(started.data or b"{}")["name"] == "gateway"
        await reads.model_server_infos(js)
        assert monitor.errors == []
    for role in NOT_SUPERVISOR:
        if role == "observer":
            continue
        async with connected(system, role) as session:
            await streams.ensure_streams(session.nc.jetstream(timeout=2.0))  # every process, at start
            assert session.errors == []


async def test_the_observer_follows_every_subject_and_publishes_nothing(system: System) -> None:
    async with connected(system, "observer") as observer:
        sub = await observer.nc.subscribe(subjects.ALL_HEARTBEATS)
        assert (await sub.next_msg(timeout=5)).subject.startswith("victoria.heartbeat.")
        everything = await observer.nc.subscribe(f"{subjects.PREFIX}.>")
        assert (await everything.next_msg(timeout=5)).subject.startswith(f"{subjects.PREFIX}.")
        assert observer.errors == []


async def test_veronica_and_the_monitor_answer_the_requests_they_receive(system: System) -> None:
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
    names = ("gateway", "victoria", "veronica", "monitor", "llm-runner")
    pids = {name: system.pid_of(name) for name in names}  # each once it is up
    started = stream_messages(system.bus_url(), "victoria.svc.*.*.started")
    for name in names:
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
