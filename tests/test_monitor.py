"""The service monitor's judgement (actors/monitor/actor.py), against a real nats-server."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from nats.aio.client import Client as NATS

from victoria.actors.monitor.actor import Monitor, _Entry
from victoria.events import subjects
from victoria.events.codec import service_decoder
from victoria.events.contracts import ServiceDown, utcnow
from victoria.runtime.config import Config

pytestmark = pytest.mark.usefixtures("strict_loop")


def silent(name: str, instance: str, seconds: float) -> _Entry:
    return _Entry(name, instance, pid=1, last_seen=utcnow() - timedelta(seconds=seconds), interval=0.5)


async def hearing_itself(monitor: Monitor, seconds: float, *, late: float = 0.0) -> None:
    """``seconds`` pass while the monitor's own beats come back to it, each ``late`` seconds after
    it was sent, looking every 0.25 s."""
    for _ in range(int(seconds / 0.25)):
        monitor.own_beat(utcnow() - timedelta(seconds=late))
        await monitor.check()
        await asyncio.sleep(0.25)


async def test_a_silent_instance_is_down_while_the_monitor_hears_its_own_heartbeats(nc: NATS) -> None:
    monitor = Monitor(nc, Config.from_env({"VICTORIA_INSTANCE": "m1", "VICTORIA_HEARTBEAT_INTERVAL": "0.5"}))
    monitor.entries[("monitor", "m1")] = silent("monitor", "m1", 0.1)
    monitor.entries[("victoria", "a")] = silent("victoria", "a", 10.0)
    monitor.entries[("victoria", "b")] = silent("victoria", "b", 0.1)
    await hearing_itself(monitor, 2.0)  # more than three intervals of 0.5 s
    assert monitor.entries[("victoria", "a")].status == "down"
    assert monitor.entries[("victoria", "b")].status == "down"  # its beats stopped 2 s ago
    stored = await nc.jetstream().get_last_msg(
        subjects.SERVICE_STREAM, subjects.service_event("victoria", "a", "down")
    )
    event = service_decoder.decode(stored.data or b"")
    assert isinstance(event, ServiceDown) and "no heartbeat for 1" in event.reason, event  # 10 s and more


async def test_nobody_is_declared_down_while_the_monitors_own_heartbeats_are_late_too(nc: NATS) -> None:
    """A NATS server of the cluster went away: every beat, the monitor's own too, stops reaching it
    for a few seconds while the heartbeat stream elects a leader. That is no service's death, and
    once the beats flow again every instance gets its full three intervals to be heard."""
    monitor = Monitor(nc, Config.from_env({"VICTORIA_INSTANCE": "m1", "VICTORIA_HEARTBEAT_INTERVAL": "0.5"}))
    monitor.entries[("monitor", "m1")] = silent("monitor", "m1", 1.2)
    monitor.entries[("victoria", "a")] = silent("victoria", "a", 10.0)
    monitor.own_beat(utcnow() - timedelta(seconds=1.2))  # its last beat back: just past two intervals
    await monitor.check()
    assert monitor.entries[("victoria", "a")].status == "up"
    assert monitor.entries[("monitor", "m1")].status == "up", "the monitor never judges itself"
    # Its own beats come again; the other has three intervals from then before it counts as down.
    await hearing_itself(monitor, 1.0)
    assert monitor.entries[("victoria", "a")].status == "up"
    await hearing_itself(monitor, 1.0)
    assert monitor.entries[("victoria", "a")].status == "down"


async def test_a_silent_instance_is_down_even_while_the_monitors_own_beats_come_back_late(nc: NATS) -> None:
    """A slow pipe (a loaded machine): the monitor's beats come back 1.2 s after they were sent,
    more than two intervals, but none is lost. The silence of an instance that stopped is still
    judged, later by as much; it was never judged while the monitor kept counting itself blind."""
    monitor = Monitor(nc, Config.from_env({"VICTORIA_INSTANCE": "m1", "VICTORIA_HEARTBEAT_INTERVAL": "0.5"}))
    monitor.entries[("monitor", "m1")] = silent("monitor", "m1", 1.2)
    monitor.entries[("victoria", "a")] = silent("victoria", "a", 0.1)
    await hearing_itself(monitor, 1.0, late=1.2)
    assert monitor.entries[("victoria", "a")].status == "up"  # 1.5 s of its silence not yet seen
    await hearing_itself(monitor, 2.0, late=1.2)
    assert monitor.entries[("victoria", "a")].status == "down"


async def test_an_instance_that_beats_faster_than_the_monitor_is_judged_at_the_monitors_next_beat(
    nc: NATS,
) -> None:
    """A bot beating every 0.5 s, a monitor every 2 s: 1.8 s after both beat, the monitor cannot
    tell the bot's silence from a broken pipe (its own next beat is not due yet); its next beat
    tells it."""
    monitor = Monitor(nc, Config.from_env({"VICTORIA_INSTANCE": "m1", "VICTORIA_HEARTBEAT_INTERVAL": "2"}))
    monitor.entries[("monitor", "m1")] = silent("monitor", "m1", 0.0)
    monitor.entries[("telegram", "bot")] = silent("telegram", "bot", 0.0)
    monitor.entries[("victoria", "a")] = _Entry("victoria", "a", pid=2, last_seen=utcnow(), interval=2.0)
    monitor.own_beat(utcnow())
    await asyncio.sleep(1.8)
    await monitor.check()
    assert monitor.entries[("telegram", "bot")].status == "up"
    monitor.own_beat(utcnow())
    await monitor.check()
    assert monitor.entries[("telegram", "bot")].status == "down"
    assert monitor.entries[("victoria", "a")].status == "up"


async def test_nobody_is_declared_down_while_none_of_the_monitors_own_beats_come_back(nc: NATS) -> None:
    monitor = Monitor(nc, Config.from_env({"VICTORIA_INSTANCE": "m1", "VICTORIA_HEARTBEAT_INTERVAL": "0.5"}))
    monitor.entries[("monitor", "m1")] = silent("monitor", "m1", 0.0)
    monitor.entries[("victoria", "a")] = silent("victoria", "a", 0.1)
    monitor.own_beat(utcnow())
    for _ in range(12):  # 3 s, six of its intervals, and nothing of the monitor's comes back
        await monitor.check()
        await asyncio.sleep(0.25)
    assert monitor.entries[("victoria", "a")].status == "up"
    await hearing_itself(monitor, 1.0)  # back after a gap: three intervals from now
    assert monitor.entries[("victoria", "a")].status == "up"
    await hearing_itself(monitor, 1.0)
    assert monitor.entries[("victoria", "a")].status == "down"
