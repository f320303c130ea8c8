"""Who may call the gateway: API tokens, sent as a Bearer token or as the password of HTTP Basic.

Tokens come from ``VICTORIA_API_TOKEN`` (one) and ``VICTORIA_API_TOKENS_FILE`` (one client a line,
``name token``, or a bare token; ``#`` starts a comment). The file is read again when it changes, so
that removing a line revokes that client within ``RELOAD_EVERY`` seconds, without a restart. Only
SHA-256 digests of the tokens are kept, and a presented token is compared with every one of them
with ``hmac.compare_digest``: the time taken does not tell how much of a guess was right, nor which
client's token was near. Tokens are never logged; a refused request logs the client address and
the path.

The old server's clients take only a URL: ``http://victoria:TOKEN@host:8010`` makes requests,
httpx and curl send HTTP Basic auth, whose password is taken as the token (or its user name, when
the password is empty: ``http://TOKEN@host:8010``).

With no token configured, a gateway bound to loopback answers everyone, and one bound to another
address does not start unless told ``--insecure`` (``victoria.runtime.listen``, which ``victoria up``
checks too: ``Tokens.required`` is ``listen.tokens_configured`` of the same configuration).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from victoria.errors import ConfigError
from victoria.runtime.config import MIN_TOKEN_LENGTH, Config

log = logging.getLogger(__name__)

RELOAD_EVERY: Final = 1.0  # seconds between looks at the tokens file
REALM: Final = "victoria"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_tokens_file(text: str, *, source: str = "VICTORIA_API_TOKENS_FILE") -> dict[bytes, str]:
    """Digest -> client name, from the file's lines (``name token`` or ``token``)."""
    found: dict[bytes, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 2:
            raise ConfigError(source, f"line {number}: expected 'name token' or 'token'")
        name, token = (words[0], words[1]) if len(words) == 2 else (f"line-{number}", words[0])
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(source, f"line {number}: a token needs {MIN_TOKEN_LENGTH} or more characters")
        found[_digest(token)] = name
    return found


def presented_token(authorization: str | None) -> str | None:
    """The token in an ``Authorization`` header: Bearer, or Basic's password (its user when the
    password is empty). None when there is none or the header is malformed."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if not value:
        return None
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        return password or user or None
    return None


@dataclass(frozen=True, slots=True)
class _FileState:
    mtime_ns: int
    size: int


class Tokens:
    """The tokens the gateway accepts, and the client each belongs to."""

    def __init__(self, *, token: str | None = None, path: Path | None = None) -> None:
        self._fixed: dict[bytes, str] = {_digest(token): "api-token"} if token else {}
        self.path = path
        self._from_file: dict[bytes, str] = {}
        self._seen: _FileState | None = None
        if path is not None:
            self._load(first=True)

    @classmethod
    def from_config(cls, config: Config) -> Tokens:
        return cls(token=config.api_token, path=config.api_tokens_file)

    @property
    def required(self) -> bool:
        """True when a token is configured: then every route but the open ones (``routes.OPEN_PATHS``)
        asks for one (an empty tokens file shuts every client out, which is what removing the last
        line means)."""
        return bool(self._fixed) or self.path is not None

    def client_of(self, token: str | None) -> str | None:
        """The client whose token this is, or None. Compares with every known digest."""
        if token is None:
            return None
        presented = _digest(token)
        match: str | None = None
        for digest, name in self._known().items():
            if hmac.compare_digest(presented, digest):
                match = name
        return match

    def _known(self) -> Mapping[bytes, str]:
        if not self._from_file:
            return self._fixed
        return {**self._from_file, **self._fixed}

    def _load(self, *, first: bool = False) -> None:
        assert self.path is not None
        try:
            stat = os.stat(self.path)
            seen = _FileState(stat.st_mtime_ns, stat.st_size)
            if seen == self._seen:
                return
            text = self.path.read_text(encoding="utf-8")
            tokens = parse_tokens_file(text)
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            if first:
                raise ConfigError("VICTORIA_API_TOKENS_FILE", f"{self.path}: {exc}") from None
            log.warning("tokens file %s not read again, the last one read stays: %s", self.path, exc)
            return
        self._from_file, self._seen = tokens, seen
        if not first:
            log.info("tokens file %s read again: %d clients", self.path, len(tokens))

    async def watch(self) -> None:
        """Read the tokens file again whenever it changes, until cancelled."""
        if self.path is None:
            return
        while True:
            await asyncio.sleep(RELOAD_EVERY)
            await asyncio.to_thread(self._load)


_unauthorized: Final = msgspec.json.encode(
    {"error": "unauthorized", "detail": "send Authorization: Bearer <token> (or the token as Basic password)"}
)
_invalid: Final = msgspec.json.encode({"error": "unauthorized", "detail": "the token is not valid"})


class RequireToken:
    """ASGI middleware: every HTTP request but ``open_paths`` needs a token that ``tokens`` knows.

    Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which would buffer the server-sent
    event routes."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: Tokens,
        open_paths: Iterable[str],
        on_refusal: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.open_paths = frozenset(open_paths)
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.tokens.required or self._is_open(scope):
            await self.app(scope, receive, send)
            return
        header: str | None = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        token = presented_token(header)
        client = self.tokens.client_of(token)
        if client is not None:
            scope.setdefault("state", {})["client"] = client
            await self.app(scope, receive, send)
            return
        peer = scope.get("client") or ("?", 0)
        log.info(
            "refused %s %s from %s: %s",
            scope["method"],
            scope["path"],
            peer[0],
            "no token" if token is None else "unknown token",
        )
        if self.on_refusal is not None:
            self.on_refusal()
        await _send_401(send, _unauthorized if token is None else _invalid)

    def _is_open(self, scope: Scope) -> bool:
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        return path in self.open_paths


async def _send_401(send: Send, body: bytes) -> None:
    start: Message = {
        "type": "http.response.start",
        "status": 401,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", f'Bearer realm="{REALM}"'.encode()),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
