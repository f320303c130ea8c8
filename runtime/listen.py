"""Where the gateway listens, and the refusal to listen beyond this machine with no token asked for.

With no API token configured, a gateway bound to loopback answers everyone, and one bound to
another address does not start unless told ``--insecure``. ``victoria up`` checks this before it
starts anything, the gateway again when it starts alone; checking the tokens a request presents is
the gateway's own job (its ``auth`` module).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from victoria.errors import VictoriaError
from victoria.runtime.config import Config

log = logging.getLogger(__name__)


class InsecureListen(VictoriaError):
    """The gateway would listen beyond this machine with nobody asked for a token."""

    def __init__(self, host: str) -> None:
        super().__init__(
            f"refusing to listen on {host} without an API token: anyone who can reach this address "
            "could run tasks and read the workspace's files. Set VICTORIA_API_TOKEN (or "
            "VICTORIA_API_TOKENS_FILE), listen on 127.0.0.1, or pass --insecure to run open anyway"
        )
        self.host = host


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def tokens_configured(config: Config) -> bool:
    """True when ``VICTORIA_API_TOKEN`` or ``VICTORIA_API_TOKENS_FILE`` is set: then the gateway asks
    every client for a token (an empty tokens file shuts every client out)."""
    return bool(config.api_token) or config.api_tokens_file is not None


def refuse_open_listen(host: str, *, tokens_required: bool, insecure: bool) -> None:
    """Raise ``InsecureListen`` for a non-loopback ``host`` without tokens, unless ``insecure``."""
    if tokens_required or is_loopback(host):
        return
    if not insecure:
        raise InsecureListen(host)
    log.warning(
        "the gateway listens on %s with no API token (--insecure): anyone who can reach it can "
        "run tasks and read the workspace's files",
        host,
    )


@dataclass(frozen=True, slots=True)
class Listen:
    """Where the gateway listens: ``host`` and ``port``; ``insecure`` (``--insecure``): open to the
    network without a token, on purpose."""

    host: str
    port: int
    insecure: bool = False

    def refuse_open(self, config: Config) -> None:
        """``refuse_open_listen`` for this address, with the tokens ``config`` names."""
        refuse_open_listen(self.host, tokens_required=tokens_configured(config), insecure=self.insecure)
