"""Connecting to NATS: endless reconnects, the credentials a process connects with, the URL to use,
and what a request meets while the server is away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from victoria.errors import BrokerRefused, BrokerUnavailable
from victoria.runtime import credentials
from victoria.runtime.config import Config

log = logging.getLogger(__name__)

BROKER_AWAY: Final = (
    TimeoutError,
    nats.errors.NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    nats.errors.ConnectionClosedError,
)
"""What a request meets while NATS is away or a stream elects a leader (a server of the cluster
went away): worth asking again, or handing the message back, not a bug."""


async def connect(
    url: str,
    *,
    name: str,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    connect_timeout: float = 5.0,
    user: str | None = None,
    password: str | None = None,
    creds_file: Path | None = None,
) -> NATS:
    """Connect with endless reconnects: a NATS restart is something to ride out, not to die of.

    ``user`` and ``password`` (or a NATS ``creds_file``) authenticate; credentials in ``url``
    win over them. A server without authorization ignores them. Log lines show the URL without
    its password. A connection as a user takes its replies on ``_INBOX.<user>.>``, the only
    inboxes nats.conf lets that user subscribe to: nobody reads another's replies."""
    shown = credentials.redact(url)
    if credentials.has_credentials(url):
        user = password = creds_file = None
    inbox_prefix = credentials.inbox_prefix(user or credentials.user_in(url))

    client: list[NATS] = []
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[Exception] = loop.create_future()

    async def error_cb(exc: Exception) -> None:
        if not client and _authorization_violation(exc):
            # At the first connect nats-py would try again forever: no waiting mends this.
            if not refused.done():
                refused.set_result(exc)
            return
        log.warning("nats %s: %s", type(exc).__name__, exc)

    async def disconnected_cb() -> None:
        if not client or client[0].is_closed:  # our own close or drain, or a first connect given up
            log.debug("nats connection to %s closed", shown)
        else:
            log.warning("nats disconnected from %s", shown)

    async def reconnected_cb() -> None:
        log.info("nats reconnected to %s", shown)
        if on_reconnect is not None:
            await on_reconnect()

    deadline = loop.time() + connect_timeout
    last: BaseException | None = None
    while loop.time() < deadline:
        nc = NATS()
        options: dict[str, Any] = {
            "servers": credentials.servers(url),
            "name": name,
            "connect_timeout": min(2.0, connect_timeout),
            "reconnect_time_wait": 0.5,
            "max_reconnect_attempts": -1,
            "allow_reconnect": True,
            "ping_interval": 5,
            "max_outstanding_pings": 3,
            "error_cb": error_cb,
            "disconnected_cb": disconnected_cb,
            "reconnected_cb": reconnected_cb,
            "user": user,
            "password": password,
            "user_credentials": str(creds_file) if creds_file is not None else None,
            "inbox_prefix": inbox_prefix,
        }
        attempt = asyncio.ensure_future(nc.connect(**options))
        waiting: set[asyncio.Future[Any]] = {attempt, refused}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if attempt.done() and not attempt.cancelled() and attempt.exception() is None:
            client.append(nc)
            return nc
        if attempt.done():
            last = attempt.exception()
        else:
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
        with contextlib.suppress(Exception):
            await nc.close()
        if refused.done():
            who = f"the user {user!r}" if user else f"the creds {creds_file}" if creds_file else "no user"
            raise BrokerRefused(
                f"NATS at {shown} refused {who}: authorization violation (wrong or missing credentials: "
                "VICTORIA_NATS_USER and VICTORIA_NATS_PASSWORD, VICTORIA_NATS_CREDS, or the data dir's "
                "nats-credentials.json)"
            )
        await asyncio.sleep(0.2)
    raise BrokerUnavailable(f"cannot connect to NATS at {shown}: {last}")


def _authorization_violation(exc: Exception) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower()


def resolve_nats_url(config: Config, explicit: str | None = None) -> str:
    """``--nats-url`` first, then ``NATS_URL``, then the URL that ``victoria up`` recorded."""
    if explicit:
        return explicit
    if config.nats_url:
        return config.nats_url
    path: Path = config.nats_url_file
    try:
        url = path.read_text(encoding="utf-8").strip()
    except OSError:
        raise BrokerUnavailable(
            f"no NATS URL: pass --nats-url, set NATS_URL, or start `victoria up` (it records {path})"
        ) from None
    if not url:
        raise BrokerUnavailable(f"{path} is empty")
    return url
