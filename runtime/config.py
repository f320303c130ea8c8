"""One frozen configuration object per process, read from the environment by ``Config.from_env``."""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypeVar

from victoria.errors import ConfigError
from victoria.runtime import modelservers
from victoria.runtime.modelservers import ModelServer

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
DEFAULT_MODEL_MAX_WAIT: Final = 30.0  # seconds a call waits for its model before the server swaps
DEFAULT_MAX_TASKS_IN_FLIGHT: Final = 10_000  # tasks queued or running before POST /run says 503
MIN_TOKEN_LENGTH: Final = 16  # characters of an API token

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


def _get(
    environ: Mapping[str, str],
    name: str,
    default: T,
    parse: Callable[[str], T],
    what: str,
    *,
    secret: bool = False,
) -> T:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except (ValueError, TypeError):
        got = f"{len(raw.strip())} characters" if secret else repr(raw)
        raise ConfigError(name, f"expected {what}, got {got}") from None


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


def _trace_url(raw: str) -> str:
    if "{trace_id}" not in raw:
        raise ValueError(raw)
    return _url(raw)


def _nats_url(raw: str) -> str:
    """One server's URL, or a comma-separated list of them (a cluster's)."""
    servers = [part.strip() for part in raw.split(",")]
    if not all(re.match(r"^(nats|tls|ws|wss)://\S+$", server) for server in servers):
        raise ValueError(raw)
    return ",".join(servers)


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


def _replicas(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 5:  # JetStream's own bound
        raise ValueError(raw)
    return value


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


def _token(raw: str) -> str:
    if len(raw) < MIN_TOKEN_LENGTH or any(c.isspace() for c in raw):
        raise ValueError("a short token")  # the message must not echo the token
    return raw


def _existing_file(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ValueError(raw)
    return path


def _nats_user(env: Mapping[str, str]) -> str | None:
    user = _get(env, "VICTORIA_NATS_USER", None, str, "a NATS user name")
    if user is not None and not env.get("VICTORIA_NATS_PASSWORD", "").strip():
        raise ConfigError("VICTORIA_NATS_PASSWORD", "not set, but VICTORIA_NATS_USER is: set both")
    return user


def _api(raw: str) -> Literal["ollama", "openai"]:
    if raw == "ollama":
        return "ollama"
    if raw == "openai":
        return "openai"
    raise ValueError(raw)


def _model_servers(env: Mapping[str, str]) -> tuple[tuple[ModelServer, ...], Path | None]:
    default: modelservers.Api = "ollama"
    api = _get(env, "VICTORIA_LLM_API", default, _api, "ollama or openai")
    path = _get(env, "VICTORIA_MODELS_FILE", None, _existing_file, "a readable file")
    if path is not None:
        try:
            return modelservers.load_file(path, api), path
        except ValueError as exc:
            raise ConfigError("VICTORIA_MODELS_FILE", str(exc)) from None
    fallback: tuple[ModelServer, ...] = (ModelServer(url=DEFAULT_LLM_URL, api=api),)
    servers = _get(
        env,
        "VICTORIA_LLM_URL",
        fallback,
        lambda raw: modelservers.parse_urls(raw, api),
        "http(s) URLs, comma-separated, each optionally after ollama: or openai:",
    )
    return servers, None


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
    nats_user: str | None = None
    """VICTORIA_NATS_USER: the NATS user to connect as (with VICTORIA_NATS_PASSWORD). ``victoria up``
    gives each process it starts its own; alone, a process takes its role's entry in the data dir's
    ``nats-credentials.json`` when this is unset (``victoria.runtime.credentials``)."""
    nats_password: str | None = field(default=None, repr=False)
    """VICTORIA_NATS_PASSWORD: that user's password."""
    nats_creds: Path | None = None
    """VICTORIA_NATS_CREDS: a NATS creds file (JWT and NKey seed) to connect with instead."""
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
    api_token: str | None = field(default=None, repr=False)
    """VICTORIA_API_TOKEN: a token every gateway route but /health and /ready asks for (Bearer, or
    the password of HTTP Basic auth); also what ``victoria run`` and the other commands send."""
    api_tokens_file: Path | None = None
    """VICTORIA_API_TOKENS_FILE: a file of tokens, one client a line (``name token``), read again
    when it changes, so that one client's token can be revoked without a restart."""
    replicas: int = 1
    """VICTORIA_REPLICAS: copies of every stream and bucket made at start, each on its own server
    (1 on one machine, 3 on a cluster: it survives the loss of one server). Streams that exist
    keep theirs."""
    max_tasks_in_flight: int = DEFAULT_MAX_TASKS_IN_FLIGHT
    """VICTORIA_MAX_TASKS_IN_FLIGHT: tasks queued or running past which the gateway refuses new ones
    with 503 and ``Retry-After`` (0: no limit)."""
    trace_url: str | None = None
    """VICTORIA_TRACE_URL: one trace in a trace viewer, ``{trace_id}`` where its id goes (Jaeger:
    ``http://127.0.0.1:16686/trace/{trace_id}``); the dashboard links each task's trace there."""

    llm_servers: tuple[ModelServer, ...] = ()
    """VICTORIA_LLM_URL as a list (``[api:]url``, comma-separated) or VICTORIA_MODELS_FILE: every
    model server the runner may call. Empty: the one of ``llm_url`` and ``llm_api``."""
    models_file: Path | None = None
    """VICTORIA_MODELS_FILE: a TOML file of model servers (``runtime/modelservers.py``)."""
    model_max_wait: float = DEFAULT_MODEL_MAX_WAIT
    """VICTORIA_MODEL_MAX_WAIT: seconds a call for a model that is not loaded waits while the loaded
    one still has work; then the server is made to swap."""

    @property
    def servers(self) -> tuple[ModelServer, ...]:
        """The model servers, never empty."""
        return self.llm_servers or (ModelServer(url=self.llm_url, api=self.llm_api),)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        level = env.get("VICTORIA_LOG_LEVEL", "INFO").strip().upper() or "INFO"
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("VICTORIA_LOG_LEVEL", f"expected DEBUG, INFO, WARNING or ERROR, got {level!r}")
        servers, models_file = _model_servers(env)
        return cls(
            nats_url=_get(
                env, "NATS_URL", None, _nats_url, "a nats:// URL or a comma-separated list of them"
            ),
            data_dir=_get(env, "VICTORIA_DATA_DIR", default_data_dir(env), Path, "a directory"),
            nats_user=_nats_user(env),
            nats_password=_get(env, "VICTORIA_NATS_PASSWORD", None, str, "a password", secret=True),
            nats_creds=_get(env, "VICTORIA_NATS_CREDS", None, _existing_file, "a readable file"),
            llm_url=servers[0].url,
            llm_api=servers[0].api,
            llm_servers=servers,
            models_file=models_file,
            model_max_wait=_get(
                env, "VICTORIA_MODEL_MAX_WAIT", DEFAULT_MODEL_MAX_WAIT, _positive_float, "seconds"
            ),
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
            api_token=_get(
                env,
                "VICTORIA_API_TOKEN",
                None,
                _token,
                f"a token of {MIN_TOKEN_LENGTH} or more characters, no spaces",
                secret=True,
            ),
            api_tokens_file=_get(env, "VICTORIA_API_TOKENS_FILE", None, _existing_file, "a readable file"),
            replicas=_get(env, "VICTORIA_REPLICAS", 1, _replicas, "1 to 5"),
            max_tasks_in_flight=_get(
                env,
                "VICTORIA_MAX_TASKS_IN_FLIGHT",
                DEFAULT_MAX_TASKS_IN_FLIGHT,
                _count,
                "a count (0: no limit)",
            ),
            trace_url=_get(env, "VICTORIA_TRACE_URL", None, _trace_url, "an http(s) URL with {trace_id}"),
        )

    @property
    def nats_url_file(self) -> Path:
        return self.data_dir / "nats.url"

    @property
    def nats_credentials_file(self) -> Path:
        """The NATS users' passwords, made by ``victoria up`` at its first start (mode 0600)."""
        return self.data_dir / "nats-credentials.json"
