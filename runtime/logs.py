"""Process-wide logging set-up: plain lines on stderr, the actor's name in each."""

from __future__ import annotations

import logging
import sys

from victoria.runtime.logbus import BusLogHandler


def setup(actor: str, level: str = "INFO", *, instance: str | None = None) -> BusLogHandler | None:
    """Log to stderr; with ``instance``, also as events on ``victoria.log.<actor>.<level>``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {actor}[%(process)d] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party libraries are quiet unless something is wrong.
    for noisy in ("httpx", "httpcore", "uvicorn.access", "nats", "mcp", "sse_starlette"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if instance is None:
        return None
    bus_handler = BusLogHandler(actor, instance)
    root.addHandler(bus_handler)
    return bus_handler
