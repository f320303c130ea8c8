"""One frozen configuration object per process, read from the environment by ``Config.from_env``."""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeVar

from victoria.errors import ConfigError

DEFAULT_LLM_URL: Final = "http://127.0.0.1:11434"
DEFAULT_LLM_API: Final = "ollama"
DEFAULT_MODEL: Final = "llama3.2"
DEFAULT_LLM_TIMEOUT: Final = 300.0  # seconds, one model call
DEFAULT_TASK_DEADLINE: Final = 900.0  # seconds, one whole task
DEFAULT_DELEGATE_TIMEOUT: Final = 90.0  # seconds, one delegation to Veronica
DEFAULT_MAX_ATTEMPTS: Final = 5  # deliveries of one task to Victoria
DEFAULT_ACK_WAIT: Final = 5.0  # seconds without progress before a task is delivered again
DEFAULT_DEDUP_WINDOW: Final = 120.0  # seconds an append's Nats-Msg-Id is remembered
DEFAULT_HEARTBEAT_INTERVAL: Final = 2.0  # seconds
DEFAULT_CONCURRENCY: Final = 256  # tasks one Victoria instance runs at once
DEFAULT_LLM_CONCURRENCY: Final = 64  # model calls one runner instance makes at once
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8010
DEFAULT_GATEWAY_URL: Final = "http://127.0.0.1:8010"
DEFAULT_MAX_STEPS: Final = 8
DEFAULT_MAX_STEPS_CEILING: Final = 50  # steps: a larger max_steps is lowered to this
DEFAULT_RESTART_BACKOFF: Final = 0.5  # seconds before the first restart of a crashed actor
DEFAULT_CRASH_LOOP_LIMIT: Final = 6  # restarts ...
DEFAULT_CRASH_LOOP_WINDOW: Final = 120.0  # ... within this many seconds: the actor is left down
DEFAULT_DB_COMMAND_TIMEOUT: Final = 10.0  # seconds, one PostgreSQL statement
DEFAULT_DB_CONNECT_TIMEOUT: Final = 5.0  # seconds, one PostgreSQL connection
DEFAULT_STARTUP_EXPERTS_TIMEOUT: Final = 30.0  # seconds, one load of the experts
DEFAULT_STARTUP_REGISTRY_TIMEOUT: Final = 20.0  # seconds, one load of the project registry
DEFAULT_REGISTRY_REFRESH: Final = 5.0  # seconds between loads of experts and projects
DEFAULT_PROBE_INTERVAL: Final = 10.0  # seconds
DEFAULT_PROBE_TIMEOUT: Final = 3.0  # seconds
DEFAULT_PROBE_FAILURES: Final = 3  # in a row
DEFAULT_PROBE_SUCCESSES: Final = 1  # in a row

T = TypeVar("T")


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """Where ``victoria up`` keeps JetStream and the NATS URL file, the same from any directory."""
    home = Path(environ.get("HOME") or Path.home())
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "victoria"
    xdg = environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else home / ".local" / "share") / "victoria"


def default_instance() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]) or "host"
    return host[:48]


def _get(environ: Mapping[str, str], name: str, default: T, parse: Callable[[str], T], what: str) -> T:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except (ValueError, TypeError):
        raise ConfigError(name, f"expected {what}, got {raw!r}") from None


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(raw)
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(raw)
    return value


def _url(raw: str) -> str:
    if not re.match(r"^https?://[^\s/]+", raw):
        raise ValueError(raw)
    return raw.rstrip("/")


def _nats_url(raw: str) -> str:
    if not re.match(r"^(nats|tls|ws|wss)://\S+$", raw):
        raise ValueError(raw)
    return raw


def _dsn(raw: str) -> str:
    if not re.match(r"^postgres(ql)?://\S+$", raw):
        raise ValueError(raw)
    return raw


def _bool(raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _api(raw: str) -> Literal["ollama", "openai"]:
    if raw == "ollama":
        return "ollama"
    if raw == "openai":
        return "openai"
    raise ValueError(raw)


def _instance(raw: str) -> str:
    if not re.match(r"^[A-Za-z0-9_-]{1,48}$", raw):
        raise ValueError(raw)
    return raw


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    nats_url: str | None
    """NATS_URL: the broker. None means: find it in the data dir (or, for ``up``, start one)."""
    data_dir: Path
    """VICTORIA_DATA_DIR: JetStream store, the NATS URL file and server log of ``victoria up``."""
    llm_url: str = DEFAULT_LLM_URL
    """VICTORIA_LLM_URL: base URL of the model server."""
    llm_api: Literal["ollama", "openai"] = "ollama"
    """VICTORIA_LLM_API: ``ollama`` (/api/chat) or ``openai`` (/v1/chat/completions)."""
    model: str = DEFAULT_MODEL
    """VICTORIA_MODEL: the model used when a task names none."""
    llm_timeout: float = DEFAULT_LLM_TIMEOUT
    """VICTORIA_LLM_TIMEOUT: seconds one model call may take, waiting for the server included."""
    task_deadline: float = DEFAULT_TASK_DEADLINE
    """VICTORIA_TASK_DEADLINE: seconds one task may take from submission."""
    workspace: Path
    """VICTORIA_WORKSPACE: the only directory Veronica's tools can see."""
    delegate_timeout: float = DEFAULT_DELEGATE_TIMEOUT
    """DELEGATE_VERONICA_TIMEOUT: seconds Victoria waits for Veronica before doing the work herself."""
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    """VICTORIA_MAX_ATTEMPTS: deliveries of one task before it fails for good."""
    ack_wait: float = DEFAULT_ACK_WAIT
    """VICTORIA_ACK_WAIT: seconds without progress (an in-progress ack every quarter of it) before a
    task or model request goes to another instance. Fencing makes a short one safe: a holder that
    was only slow loses the task cleanly."""
    dedup_window: float = DEFAULT_DEDUP_WINDOW
    """VICTORIA_DEDUP_WINDOW: seconds the task streams remember an append's ``Nats-Msg-Id``
    (JetStream's ``duplicate_window``), set when the streams are created."""
    allow_unfenced: bool = False
    """VICTORIA_ALLOW_UNFENCED: run on a nats-server older than 2.11, which cannot fence appends."""
    instance: str
    """VICTORIA_INSTANCE: this process's instance name in /services (default: the host name)."""
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    """VICTORIA_HEARTBEAT_INTERVAL: seconds between heartbeats."""
    concurrency: int = DEFAULT_CONCURRENCY
    """VICTORIA_CONCURRENCY: tasks one Victoria instance runs at once."""
    llm_concurrency: int = DEFAULT_LLM_CONCURRENCY
    """VICTORIA_LLM_CONCURRENCY: model calls one LLM runner instance makes at once."""
    host: str = DEFAULT_HOST
    """VICTORIA_HOST: the gateway's listen address."""
    port: int = DEFAULT_PORT
    """VICTORIA_PORT: the gateway's listen port."""
    gateway_url: str = DEFAULT_GATEWAY_URL
    """VICTORIA_URL: where ``victoria run`` and ``status`` find the gateway."""
    log_level: str = "INFO"
    """VICTORIA_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR."""
    restart_backoff: float = DEFAULT_RESTART_BACKOFF
    """VICTORIA_RESTART_BACKOFF: seconds before the first restart of a crashed actor; doubles, to 30 s."""
    crash_loop_limit: int = DEFAULT_CRASH_LOOP_LIMIT
    """VICTORIA_CRASH_LOOP_LIMIT: restarts within VICTORIA_CRASH_LOOP_WINDOW after which an actor is left down."""
    crash_loop_window: float = DEFAULT_CRASH_LOOP_WINDOW
    """VICTORIA_CRASH_LOOP_WINDOW: seconds over which restarts are counted."""
    max_steps_ceiling: int = DEFAULT_MAX_STEPS_CEILING
    """VICTORIA_MAX_STEPS: the most steps a task may take; a larger ``max_steps`` is lowered to it."""
    postgres_dsn: str | None = None
    """VICTORIA_POSTGRES_DSN (or DATABASE_URL, the old server's name): the users' PostgreSQL, with
    their experts and projects, where the task history and session memory are kept; none by default."""
    db_command_timeout: float = DEFAULT_DB_COMMAND_TIMEOUT
    """VICTORIA_DB_COMMAND_TIMEOUT: seconds one PostgreSQL statement may take."""
    db_connect_timeout: float = DEFAULT_DB_CONNECT_TIMEOUT
    """VICTORIA_DB_CONNECT_TIMEOUT: seconds one PostgreSQL connection may take to open."""
    startup_experts_timeout: float = DEFAULT_STARTUP_EXPERTS_TIMEOUT
    """VICTORIA_STARTUP_EXPERTS_TIMEOUT: seconds one load of the experts may take."""
    startup_registry_timeout: float = DEFAULT_STARTUP_REGISTRY_TIMEOUT
    """VICTORIA_STARTUP_REGISTRY_TIMEOUT: seconds one load of the project registry may take."""
    registry_refresh: float = DEFAULT_REGISTRY_REFRESH
    """VICTORIA_REGISTRY_REFRESH: seconds between loads of experts and projects (changes made by other
    tools are used after at most this long)."""
    probe_interval: float = DEFAULT_PROBE_INTERVAL
    """VICTORIA_PROBE_INTERVAL: seconds between probes of the model server (and PostgreSQL)."""
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    """VICTORIA_PROBE_TIMEOUT: seconds one probe may take."""
    probe_failures: int = DEFAULT_PROBE_FAILURES
    """VICTORIA_PROBE_FAILURES: failures in a row before a dependency is down."""
    probe_successes: int = DEFAULT_PROBE_SUCCESSES
    """VICTORIA_PROBE_SUCCESSES: successes in a row before it is up again."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        level = env.get("VICTORIA_LOG_LEVEL", "INFO").strip().upper() or "INFO"
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("VICTORIA_LOG_LEVEL", f"expected DEBUG, INFO, WARNING or ERROR, got {level!r}")
        return cls(
            nats_url=_get(env, "NATS_URL", None, _nats_url, "a nats:// URL"),
            data_dir=_get(env, "VICTORIA_DATA_DIR", default_data_dir(env), Path, "a directory"),
            llm_url=_get(env, "VICTORIA_LLM_URL", DEFAULT_LLM_URL, _url, "an http(s) URL"),
            llm_api=_get(env, "VICTORIA_LLM_API", "ollama", _api, "ollama or openai"),
            model=_get(env, "VICTORIA_MODEL", DEFAULT_MODEL, str, "a model name"),
            llm_timeout=_get(env, "VICTORIA_LLM_TIMEOUT", DEFAULT_LLM_TIMEOUT, _positive_float, "seconds"),
            task_deadline=_get(
                env, "VICTORIA_TASK_DEADLINE", DEFAULT_TASK_DEADLINE, _positive_float, "seconds"
            ),
            workspace=_get(env, "VICTORIA_WORKSPACE", Path.cwd(), Path, "a directory"),
            delegate_timeout=_get(
                env, "DELEGATE_VERONICA_TIMEOUT", DEFAULT_DELEGATE_TIMEOUT, _positive_float, "seconds"
            ),
            max_attempts=_get(env, "VICTORIA_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, _positive_int, "a count"),
            ack_wait=_get(env, "VICTORIA_ACK_WAIT", DEFAULT_ACK_WAIT, _positive_float, "seconds"),
            dedup_window=_get(env, "VICTORIA_DEDUP_WINDOW", DEFAULT_DEDUP_WINDOW, _positive_float, "seconds"),
            allow_unfenced=_get(env, "VICTORIA_ALLOW_UNFENCED", False, _bool, "true or false"),
            instance=_get(env, "VICTORIA_INSTANCE", default_instance(), _instance, "[A-Za-z0-9_-]{1,48}"),
            heartbeat_interval=_get(
                env, "VICTORIA_HEARTBEAT_INTERVAL", DEFAULT_HEARTBEAT_INTERVAL, _positive_float, "seconds"
            ),
            concurrency=_get(env, "VICTORIA_CONCURRENCY", DEFAULT_CONCURRENCY, _positive_int, "a count"),
            llm_concurrency=_get(
                env, "VICTORIA_LLM_CONCURRENCY", DEFAULT_LLM_CONCURRENCY, _positive_int, "a count"
            ),
            host=env.get("VICTORIA_HOST", DEFAULT_HOST) or DEFAULT_HOST,
            port=_get(env, "VICTORIA_PORT", DEFAULT_PORT, _port, "a TCP port"),
            gateway_url=_get(env, "VICTORIA_URL", DEFAULT_GATEWAY_URL, _url, "an http(s) URL"),
            log_level=level,
            restart_backoff=_get(
                env, "VICTORIA_RESTART_BACKOFF", DEFAULT_RESTART_BACKOFF, _positive_float, "seconds"
            ),
            crash_loop_limit=_get(
                env, "VICTORIA_CRASH_LOOP_LIMIT", DEFAULT_CRASH_LOOP_LIMIT, _positive_int, "a count"
            ),
            crash_loop_window=_get(
                env, "VICTORIA_CRASH_LOOP_WINDOW", DEFAULT_CRASH_LOOP_WINDOW, _positive_float, "seconds"
            ),
            max_steps_ceiling=_get(
                env, "VICTORIA_MAX_STEPS", DEFAULT_MAX_STEPS_CEILING, _positive_int, "a count"
            ),
            postgres_dsn=_get(
                env,
                "VICTORIA_POSTGRES_DSN" if env.get("VICTORIA_POSTGRES_DSN", "").strip() else "DATABASE_URL",
                None,
                _dsn,
                "a postgresql:// DSN",
            ),
            db_command_timeout=_get(
                env, "VICTORIA_DB_COMMAND_TIMEOUT", DEFAULT_DB_COMMAND_TIMEOUT, _positive_float, "seconds"
            ),
            db_connect_timeout=_get(
                env, "VICTORIA_DB_CONNECT_TIMEOUT", DEFAULT_DB_CONNECT_TIMEOUT, _positive_float, "seconds"
            ),
            startup_experts_timeout=_get(
                env,
                "VICTORIA_STARTUP_EXPERTS_TIMEOUT",
                DEFAULT_STARTUP_EXPERTS_TIMEOUT,
                _positive_float,
                "seconds",
            ),
            startup_registry_timeout=_get(
                env,
                "VICTORIA_STARTUP_REGISTRY_TIMEOUT",
                DEFAULT_STARTUP_REGISTRY_TIMEOUT,
                _positive_float,
                "seconds",
            ),
            registry_refresh=_get(
                env, "VICTORIA_REGISTRY_REFRESH", DEFAULT_REGISTRY_REFRESH, _positive_float, "seconds"
            ),
            probe_interval=_get(
                env, "VICTORIA_PROBE_INTERVAL", DEFAULT_PROBE_INTERVAL, _positive_float, "seconds"
            ),
            probe_timeout=_get(
                env, "VICTORIA_PROBE_TIMEOUT", DEFAULT_PROBE_TIMEOUT, _positive_float, "seconds"
            ),
            probe_failures=_get(
                env, "VICTORIA_PROBE_FAILURES", DEFAULT_PROBE_FAILURES, _positive_int, "a count"
            ),
            probe_successes=_get(
                env, "VICTORIA_PROBE_SUCCESSES", DEFAULT_PROBE_SUCCESSES, _positive_int, "a count"
            ),
        )

    @property
    def nats_url_file(self) -> Path:
        return self.data_dir / "nats.url"
