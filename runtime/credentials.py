"""NATS users: one per role, each with a password, kept in the data dir.

``victoria up`` makes ``<data dir>/nats-credentials.json`` at its first start (mode 0600, written
once: never rewritten while it exists) and starts the embedded nats-server with every password in
its environment (``VICTORIA_NATS_PASSWORD_<ROLE>``, which nats.conf refers to). Each process it
starts gets only its own role's user and password (``VICTORIA_NATS_USER``,
``VICTORIA_NATS_PASSWORD``). What each role may publish and subscribe to is in nats.conf.

A process started alone finds its credentials with ``for_role``: in the NATS URL
(``nats://user:password@host:port``), else ``VICTORIA_NATS_USER`` and ``VICTORIA_NATS_PASSWORD``,
else a NATS creds file named by ``VICTORIA_NATS_CREDS``, else its role's entry in the data dir's
credentials file when it can read it, else none (a server without authorization).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import quote, urlsplit, urlunsplit

from victoria.errors import ConfigError
from victoria.events.subjects import is_token
from victoria.runtime import urls
from victoria.runtime.config import Config

ROLES: Final = (
    "supervisor",
    "gateway",
    "victoria",
    "veronica",
    "monitor",
    "llm-runner",
    "projector",
    "observer",
)
"""The NATS users nats.conf defines. ``supervisor`` is ``victoria up`` (and administration and
tests); ``observer`` is ``victoria watch``; the others are the processes of the same names."""
FILE_NAME: Final = "nats-credentials.json"
PASSWORD_VARIABLE_PREFIX: Final = "VICTORIA_NATS_PASSWORD_"
PASSWORD_LENGTH: Final = 32  # characters: letters and digits, about 190 bits
_LETTERS: Final = string.ascii_letters
_ALPHABET: Final = string.ascii_letters + string.digits


def password_variable(role: str) -> str:
    """The environment variable nats.conf reads the role's password from."""
    return PASSWORD_VARIABLE_PREFIX + role.upper().replace("-", "_")


def new_password() -> str:
    # A letter first, then letters and digits: nats-server parses a variable taken from the
    # environment as a configuration value, and a leading digit or "-" would read as a number.
    return secrets.choice(_LETTERS) + "".join(secrets.choice(_ALPHABET) for _ in range(PASSWORD_LENGTH - 1))


def read(path: Path) -> dict[str, str] | None:
    """The role -> password map in ``path``, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}


def load_or_create(path: Path) -> dict[str, str]:
    """The credentials in ``path``; made (mode 0600, atomically) when the file does not exist.

    An existing file is never rewritten: a file that lacks a role is an error that says so."""
    found = read(path)
    if found is None and not path.exists():
        _create(path, {role: new_password() for role in ROLES})
        found = read(path)
    if found is None:
        raise ConfigError(str(path), "cannot read the NATS credentials (JSON: role -> password)")
    missing = [role for role in ROLES if not found.get(role)]
    if missing:
        raise ConfigError(
            str(path), f"no NATS password for {', '.join(missing)}; remove the file and a new one is made"
        )
    return found


def _create(path: Path, credentials: dict[str, str]) -> None:
    """Write a new file next to ``path`` with mode 0600 and link it into place, which fails if
    another process made ``path`` meanwhile (then that one's file is kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(credentials, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def server_environment(credentials: dict[str, str]) -> dict[str, str]:
    """The variables nats.conf reads the passwords from, for the nats-server process."""
    return {password_variable(role): credentials[role] for role in ROLES}


def is_password_variable(name: str) -> bool:
    return name.startswith(PASSWORD_VARIABLE_PREFIX)


@dataclass(frozen=True, slots=True)
class Auth:
    """How one process authenticates to NATS: a user and password, a creds file, or nothing."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    creds_file: Path | None = None
    source: str = "none"
    """Where they came from, for log lines: ``url``, ``environment``, ``creds file``, the
    credentials file's path, or ``none``."""


def servers(url: str) -> list[str]:
    """The servers of a NATS URL, which may be a comma-separated list (the servers of a cluster)."""
    return [part.strip() for part in url.split(",") if part.strip()]


def has_credentials(url: str) -> bool:
    return any(urlsplit(server).username is not None for server in servers(url))


def user_in(url: str) -> str | None:
    return next((user for server in servers(url) if (user := urlsplit(server).username)), None)


def inbox_prefix(user: str | None) -> str:
    """Where a connection as ``user`` takes its replies: ``_INBOX.<user>`` (nats.conf lets each
    role subscribe to its own inboxes only), or NATS's ``_INBOX`` for no user or an unusual name."""
    if user and is_token(user):
        return f"_INBOX.{user}"
    return "_INBOX"


def redact(url: str) -> str:
    """``url`` (each of its servers) without its password, for log lines and messages."""
    return ",".join(urls.redact(server) for server in servers(url))


def without_credentials(url: str) -> str:
    def one(server: str) -> str:
        parts = urlsplit(server)
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    return ",".join(one(server) for server in servers(url))


def with_user(url: str, user: str, password: str) -> str:
    """``url`` (each of its servers) carrying ``user`` and ``password`` (as nats-py and the nats
    CLI take them)."""

    def one(server: str) -> str:
        parts = urlsplit(server)
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
        return urlunsplit(parts._replace(netloc=netloc))

    return ",".join(one(server) for server in servers(without_credentials(url)))


def for_role(config: Config, role: str, url: str) -> Auth:
    """The credentials a process of ``role`` connects with, in the order the module says."""
    if has_credentials(url):
        return Auth(source="url")
    if config.nats_user is not None:
        return Auth(user=config.nats_user, password=config.nats_password, source="environment")
    if config.nats_creds is not None:
        return Auth(creds_file=config.nats_creds, source="creds file")
    stored = read(config.nats_credentials_file)
    if stored and stored.get(role):
        return Auth(user=role, password=stored[role], source=str(config.nats_credentials_file))
    return Auth()


def child_environment(environ: dict[str, str], role: str, credentials: dict[str, str]) -> dict[str, str]:
    """``environ`` for a child of ``victoria up``: its own role's user and password, none of the
    others' (nor a creds file or the server's password variables)."""
    env = {
        k: v
        for k, v in environ.items()
        if not is_password_variable(k) and k not in ("VICTORIA_NATS_CREDS", "VICTORIA_NATS_PASSWORD")
    }
    env["VICTORIA_NATS_USER"] = role
    env["VICTORIA_NATS_PASSWORD"] = credentials[role]
    return env


def export_lines(credentials: dict[str, str]) -> list[str]:
    """``export VICTORIA_NATS_PASSWORD_<ROLE>=...`` for each role, for a shell."""
    return [f"export {name}={value}" for name, value in server_environment(credentials).items()]
