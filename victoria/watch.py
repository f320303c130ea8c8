"""``victoria watch``: subscribe like ``nats sub`` and print each message as one readable line."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

from nats.aio.msg import Msg

from victoria.runtime import connection, credentials
from victoria.runtime.process import wait_for_stop

_SKIP = {"type", "v", "ts", "task_id", "messages"}


def render(subject: str, data: bytes) -> str:
    try:
        event: Any = json.loads(data)
    except ValueError:
        return f"{subject} {data[:200]!r}"
    if not isinstance(event, dict):
        return f"{subject} {event!r}"
    ts = event.get("ts", "")
    try:
        clock = datetime.fromisoformat(str(ts).replace("Z", "+00:00")).strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        clock = "--:--:--"
    head = event.get("type", "?")
    who = event.get("task_id") or "/".join(str(event[k]) for k in ("name", "instance") if k in event)
    fields = []
    for key, value in event.items():
        if key in _SKIP or value is None or value == "" or value == []:
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        text = text.replace("\n", "\\n")
        if len(text) > 120:
            text = text[:117] + "..."
        fields.append(f"{key}={text}")
    return f"{clock} {head:<22} {who} " + " ".join(fields)


async def watch(url: str, subject: str, *, raw: bool, auth: credentials.Auth | None = None) -> int:
    """Print what arrives on ``subject``; ``auth``: how to connect (the ``observer`` user, read-only)."""
    auth = auth or credentials.Auth()
    nc = await connection.connect(
        url, name="watch", user=auth.user, password=auth.password, creds_file=auth.creds_file
    )

    async def on_msg(msg: Msg) -> None:
        line = (
            f"[{msg.subject}] {msg.data.decode(errors='replace')}" if raw else render(msg.subject, msg.data)
        )
        print(line, flush=True)

    await nc.subscribe(subject, cb=on_msg)
    print(f"watching {subject} on {credentials.redact(url)}", flush=True)
    await wait_for_stop()
    await asyncio.wait_for(nc.close(), 2.0)
    return 0
