"""The model servers as the runners see them, read from the bucket ``victoria_models``.

Each runner instance writes ``info.<server>.<instance>`` (``ModelServerInfo``) after each look at
a server. ``/services`` lists them merged per server (the newest record for what is loaded,
the sum over instances for swaps); ``/metrics`` counts the swaps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

import msgspec
from nats.js import JetStreamContext

from victoria.events.contracts import ModelServerInfo
from victoria.runtime import reads

log = logging.getLogger(__name__)

FIRST_LOOK_POLL: Final = 0.1  # seconds between reads while no runner has written a record


def merge(infos: list[ModelServerInfo]) -> list[dict[str, Any]]:
    """One entry per server: the newest record, with every instance's swaps added up."""
    by_url: dict[str, list[ModelServerInfo]] = {}
    for info in infos:
        by_url.setdefault(info.url, []).append(info)
    out = []
    for url in sorted(by_url):
        records = sorted(by_url[url], key=lambda i: i.at)
        newest = records[-1]
        entry: dict[str, Any] = msgspec.to_builtins(newest)
        entry["swaps"] = sum(r.swaps for r in records)
        entry["streaming"] = sum(r.streaming for r in records)
        if any(r.status == "busy" for r in records) and newest.status != "down":
            entry["status"] = "busy"  # one instance's call streams from it
        entry["instances"] = sorted({r.instance for r in records})
        entry.pop("instance", None)
        out.append(entry)
    return out


async def model_servers(js: JetStreamContext, *, wait: float = 0.0) -> list[dict[str, Any]]:
    """The servers as the runners last saw them; with ``wait``, up to that many seconds for a first
    record when there is none yet (a runner that has just started)."""
    deadline = time.monotonic() + wait
    while True:
        infos = await reads.model_server_infos(js)
        if infos or time.monotonic() >= deadline:
            return merge(infos)
        await asyncio.sleep(FIRST_LOOK_POLL)


def swaps_metric(servers: list[dict[str, Any]]) -> bytes:
    """Prometheus text for ``victoria_model_swaps_total{server}``."""
    lines = [
        "# HELP victoria_model_swaps_total Calls a model server answered for a model it did not hold "
        "(it had to swap), counted by the runners since they started.",
        "# TYPE victoria_model_swaps_total counter",
    ]
    for server in servers:
        url = str(server["url"]).replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'victoria_model_swaps_total{{server="{url}"}} {int(server["swaps"])}')
    return ("\n".join(lines) + "\n").encode()
