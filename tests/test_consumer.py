"""The durable work consumer (actors/consumer.py), against a real nats-server."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api as jsapi

from victoria.runtime import reads
from victoria.runtime.consumer import WorkConsumer

STREAM = "WORK"

pytestmark = [
    pytest.mark.usefixtures("strict_loop"),
    pytest.mark.nats_streams(jsapi.StreamConfig(name=STREAM, subjects=["work.>"])),
]


async def test_a_message_held_past_ack_wait_is_kept_alive_and_never_redelivered(nc: NATS) -> None:
    js = nc.jetstream()
    deliveries: list[int] = []

    async def slow(msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered or 0)
        await asyncio.sleep(3.5)  # more than three times ack_wait
        await msg.ack()

    consumer = WorkConsumer(
        nc, stream=STREAM, durable="slow", filter_subject="work.>", ack_wait=1.0, concurrency=4, handler=slow
    )
    await consumer.start()
    try:
        await js.publish("work.one", b"1")
        await asyncio.sleep(4.5)
        assert deliveries == [1]
        info = await js.consumer_info(STREAM, "slow")
        assert (info.num_ack_pending, info.num_redelivered) == (0, 0)
    finally:
        await consumer.stop()


async def test_a_message_not_acknowledged_is_delivered_again_after_ack_wait(nc: NATS) -> None:
    """The check above can fail: without in-progress acks the same message comes back."""
    js = nc.jetstream()
    deliveries: list[int] = []

    async def forgets(msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered or 0)
        if len(deliveries) > 1:
            await msg.ack()

    consumer = WorkConsumer(
        nc,
        stream=STREAM,
        durable="forgets",
        filter_subject="work.>",
        ack_wait=1.0,
        concurrency=4,
        handler=forgets,
    )
    await consumer.start()
    try:
        await js.publish("work.two", b"2")
        for _ in range(50):
            if len(deliveries) == 2:
                break
            await asyncio.sleep(0.1)
        assert deliveries == [1, 2]
    finally:
        await consumer.stop()


async def test_the_stream_sequence_read_from_the_reply_subject_is_the_one_in_the_metadata(nc: NATS) -> None:
    js = nc.jetstream()
    for n in range(3):
        await js.publish(f"work.{n}", b"x")
    sub = await js.pull_subscribe("work.>", durable="reader", stream=STREAM)
    msgs = await sub.fetch(3, timeout=5)
    assert [reads.stream_sequence(m) for m in msgs] == [m.metadata.sequence.stream for m in msgs] == [1, 2, 3]
    newer = Msg(nc, subject="work.0", reply="$JS.ACK._.ACCHASH.WORK.reader.1.42.7.1700000000000000000.0.x1y2")
    assert reads.stream_sequence(newer) == newer.metadata.sequence.stream == 42
