"""Appending task events (runtime/publish.py) and reading them back (runtime/reads.py), against a real nats-server."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import APIError, NoStreamResponseError

from victoria.events import subjects
from victoria.events.contracts import TaskStage
from victoria.runtime import publish, reads, streams

pytestmark = [pytest.mark.usefixtures("strict_loop"), pytest.mark.nats_streams()]


async def test_an_append_is_stored_once_however_often_it_is_repeated(nc: NATS) -> None:
    js = nc.jetstream()
    await streams.ensure_streams(js)
    event = TaskStage(task_id="t-bus", stage="planning")
    first = await publish.append(nc, event, key="stage:planning")
    again = await publish.append(nc, event, key="stage:planning")
    assert (first.stream, first.duplicate) == (subjects.task_stream_of("t-bus"), False)
    assert (again.seq, again.duplicate) == (first.seq, True)
    assert [seq for seq, _ in await reads.task_events(js, "t-bus")] == [first.seq]


async def test_a_refused_append_raises_the_servers_error(nc: NATS) -> None:
    js = nc.jetstream()
    await streams.ensure_streams(js)
    event = TaskStage(task_id="t-bus", stage="step", step=1)
    with pytest.raises(APIError) as caught:
        await publish.append(nc, event, key="x", headers={"Nats-Expected-Last-Sequence": "999"})
    assert caught.value.err_code == 10071  # wrong last sequence


async def test_an_append_with_no_stream_to_take_it_says_so(nc: NATS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish, "STREAM_AWAY_WAIT", 1.0)  # of 15 s
    with pytest.raises(NoStreamResponseError):
        await publish.append(nc, TaskStage(task_id="t-bus", stage="x"), key="x")
