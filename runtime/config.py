"""One frozen configuration object per process, read from the environment by ``Config.from_env``."""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from victoria.errors import ConfigError
from victoria.runtime import mcpservers, modelservers
from victoria.runtime.mcpservers import McpServer
from victoria.runtime.modelservers import ModelServer

DEFAULT_LLM_URL: Final = "http://127.0.0.1:11434"
DEFAULT_LLM_API: Final = "ollama"
DEFAULT_MODEL: Final = "llama3.2"
DEFAULT_LLM_TIMEOUT: Final = 300.0  # seconds, one model call
DEFAULT_LLM_IDLE_TIMEOUT: Final = 60.0  # seconds without a token before a call is given up
DEFAULT_LLM_CAPS: Final = "understand=200,plan=400,step=1024,answer=2048"  # output tokens by purpose
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
DEFAULT_MCP_CALL_TIMEOUT: Final = 60.0  # seconds, one call of an MCP server's tool
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


def _sandbox_mode(raw: str) -> str:
    if raw not in ("auto", "bwrap", "sandbox-exec", "none"):
        raise ValueError(raw)
    return raw


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    if not all(re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name) for name in names):
        raise ValueError(raw)
    return names


def _paths(raw: str) -> tuple[Path, ...]:
    return tuple(Path(part.strip()).expanduser() for part in raw.split(",") if part.strip())


def _effects(raw: str) -> frozenset[str]:
    effects = frozenset(part.strip() for part in raw.split(",") if part.strip())
    if not effects <= {"read", "write", "execute", "external"}:
        raise ValueError(raw)
    return effects


def _instance(raw: str) -> str:
    if not re.match(r"^[A-Za-z0-9_-]{1,48}$", raw):
        raise ValueError(raw)
    return raw


@dataclass(frozen=True, slots=True)
class Setting:
    """One configuration field as the environment gives it: the variable, its default (``shown``
    as README's configuration table shows it), how its text is read, and what it means."""

    variable: str
    default: object
    parse: Callable[[str], object]
    what: str
    """What a good value is, for the error that names the variable."""
    doc: str
    shown: str | None = None
    """The default as README shows it, where it is not the value itself (a path, the host name)."""
    secret: bool = False
    read: Callable[[_Environment], object] | None = None
    """Reads the value from the whole environment, for a field that needs more than its variable."""

    def value(self, env: _Environment) -> object:
        if self.read is not None:
            return self.read(env)
        default = self.default(env) if callable(self.default) else self.default
        return _get(env, self.variable, default, self.parse, self.what, secret=self.secret)

    @property
    def default_text(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.default is None:
            return "none"
        if isinstance(self.default, bool):
            return str(self.default).lower()
        if isinstance(self.default, float):
            return f"{self.default:g}"
        if isinstance(self.default, str) and not self.default.isdigit():
            return f"`{self.default}`"
        return str(self.default)


def _setting(
    variable: str,
    default: object,
    parse: Callable[[str], object],
    what: str,
    doc: str,
    *,
    shown: str | None = None,
    secret: bool = False,
    read: Callable[[_Environment], object] | None = None,
    repr: bool = True,
) -> Any:
    """A dataclass field declared once: its variable, default, parser and one line of doc."""
    meta = {"setting": Setting(variable, default, parse, what, doc, shown, secret, read)}
    if callable(default):  # made from the environment: the field has no default of its own
        return field(metadata=meta, repr=repr)
    return field(default=default, metadata=meta, repr=repr)


def settings() -> list[tuple[str, Setting]]:
    """Every configured field with its setting, in declaration order."""
    return [(f.name, f.metadata["setting"]) for f in fields(Config) if "setting" in f.metadata]


_SECONDS: Final = "seconds"
_COUNT: Final = "a count"


class _Environment(Mapping[str, str]):
    """The environment ``from_env`` reads, and the model servers, which four fields come from, read
    from it once (``VICTORIA_LLM_API``, ``VICTORIA_MODELS_FILE``, ``VICTORIA_LLM_URL``)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._servers: tuple[tuple[ModelServer, ...], Path | None] | None = None

    def __getitem__(self, name: str) -> str:
        return self._env[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)

    def model_servers(self) -> tuple[tuple[ModelServer, ...], Path | None]:
        if self._servers is None:
            self._servers = _model_servers(self._env)
        return self._servers


def _mcp_servers(env: Mapping[str, str]) -> tuple[McpServer, ...]:
    path = _get(env, "VICTORIA_MCP_CONFIG", None, _existing_file, "a readable file")
    if path is None:
        return ()
    try:
        return mcpservers.load_file(path)
    except ValueError as exc:
        raise ConfigError("VICTORIA_MCP_CONFIG", str(exc)) from None


def _host(env: Mapping[str, str]) -> str:
    return env.get("VICTORIA_HOST", DEFAULT_HOST) or DEFAULT_HOST


def _log_level(env: Mapping[str, str]) -> str:
    level = env.get("VICTORIA_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("VICTORIA_LOG_LEVEL", f"expected DEBUG, INFO, WARNING or ERROR, got {level!r}")
    return level


def _postgres(env: Mapping[str, str]) -> str | None:
    name = "VICTORIA_POSTGRES_DSN" if env.get("VICTORIA_POSTGRES_DSN", "").strip() else "DATABASE_URL"
    return _get(env, name, None, _dsn, "a postgresql:// DSN")


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    """Each field is declared once, with its variable, default, parser and doc (``Setting``);
    ``from_env`` reads them all, and a test holds README's configuration table to them."""

    nats_url: str | None = _setting(
        "NATS_URL",
        None,
        _nats_url,
        "a nats:// URL or a comma-separated list of them",
        "the broker; None: find it in the data dir (or, for ``up``, start one)",
        shown="(from the data dir)",
    )
    data_dir: Path = _setting(
        "VICTORIA_DATA_DIR",
        default_data_dir,
        Path,
        "a directory",
        "JetStream store, the NATS URL file and server log of ``victoria up``",
        shown="`~/.local/share/victoria` (Linux), `~/Library/Application Support/victoria` (macOS)",
    )
    nats_user: str | None = _setting(
        "VICTORIA_NATS_USER",
        None,
        str,
        "a NATS user name",
        "the NATS user to connect as (with VICTORIA_NATS_PASSWORD); alone, a process takes its role's "
        "entry in the data dir's ``nats-credentials.json`` (``victoria.runtime.credentials``)",
        shown="(from the data dir)",
        read=_nats_user,
    )
    nats_password: str | None = _setting(
        "VICTORIA_NATS_PASSWORD",
        None,
        str,
        "a password",
        "that user's password",
        shown="(from the data dir)",
        secret=True,
        repr=False,
    )
    nats_creds: Path | None = _setting(
        "VICTORIA_NATS_CREDS",
        None,
        _existing_file,
        "a readable file",
        "a NATS creds file (JWT and NKey seed) to connect with instead",
    )
    llm_url: str = _setting(
        "VICTORIA_LLM_URL",
        DEFAULT_LLM_URL,
        str,
        "",
        "base URL of the (first) model server",
        read=lambda env: env.model_servers()[0][0].url,
    )
    llm_api: Literal["ollama", "openai"] = _setting(
        "VICTORIA_LLM_API",
        DEFAULT_LLM_API,
        _api,
        "ollama or openai",
        "``ollama`` (/api/chat) or ``openai`` (/v1/chat/completions): entries that name none",
        read=lambda env: env.model_servers()[0][0].api,
    )
    model: str = _setting(
        "VICTORIA_MODEL", DEFAULT_MODEL, str, "a model name", "the model when a task names none"
    )
    llm_timeout: float = _setting(
        "VICTORIA_LLM_TIMEOUT",
        DEFAULT_LLM_TIMEOUT,
        _positive_float,
        _SECONDS,
        "seconds one model call may take, waiting for the server included",
    )
    llm_idle_timeout: float = _setting(
        "VICTORIA_LLM_IDLE_TIMEOUT",
        DEFAULT_LLM_IDLE_TIMEOUT,
        _positive_float,
        _SECONDS,
        "seconds a model call may go without a token (the first one included) before it is given up",
    )
    llm_caps: modelservers.Caps = _setting(
        "VICTORIA_LLM_CAPS",
        modelservers.parse_caps(DEFAULT_LLM_CAPS),
        modelservers.parse_caps,
        "purpose=tokens, comma-separated",
        "output caps of model calls by purpose (``understand``, ``plan``, ``step``, ``answer``); "
        "a models file sets them per server and model",
        shown=f"`{DEFAULT_LLM_CAPS}`",
    )
    task_deadline: float = _setting(
        "VICTORIA_TASK_DEADLINE",
        DEFAULT_TASK_DEADLINE,
        _positive_float,
        _SECONDS,
        "seconds one task may take from submission",
    )
    workspace: Path = _setting(
        "VICTORIA_WORKSPACE",
        lambda env: Path.cwd(),
        Path,
        "a directory",
        "the only directory Veronica's tools can see",
        shown="current directory",
    )
    sandbox: Literal["auto", "bwrap", "sandbox-exec", "none"] = _setting(
        "VICTORIA_SANDBOX",
        "auto",
        _sandbox_mode,
        "auto, bwrap, sandbox-exec or none",
        "what the model's commands run in: ``auto`` (bwrap on Linux, sandbox-exec on macOS), or "
        "``none``: no sandbox, each command with a person's approval",
    )
    sandbox_network: bool = _setting(
        "VICTORIA_SANDBOX_NETWORK",
        False,
        _bool,
        "true or false",
        "commands may reach the network (for ``pip install`` and the like)",
    )
    sandbox_env: tuple[str, ...] = _setting(
        "VICTORIA_SANDBOX_ENV",
        (),
        _names,
        "variable names, comma-separated",
        "variables of Veronica's environment passed on to commands (never VICTORIA_* or NATS_*)",
        shown="none",
    )
    sandbox_read: tuple[Path, ...] = _setting(
        "VICTORIA_SANDBOX_READ",
        (),
        _paths,
        "directories, comma-separated",
        "more directories commands may read, outside the system's and the workspace",
        shown="none",
    )
    command_max_s: float = _setting(
        "VICTORIA_COMMAND_MAX_S",
        600.0,
        _positive_float,
        _SECONDS,
        "the longest ``timeout_s`` a command may ask for (its default is 60)",
    )
    command_memory_mb: int = _setting(
        "VICTORIA_COMMAND_MEMORY_MB",
        4096,
        _positive_int,
        "megabytes",
        "address space of each process of a command (Linux)",
    )
    command_processes: int = _setting(
        "VICTORIA_COMMAND_PROCESSES",
        256,
        _positive_int,
        _COUNT,
        "processes one command may have at once",
    )
    command_output: int = _setting(
        "VICTORIA_COMMAND_OUTPUT",
        65536,
        _positive_int,
        "bytes",
        "bytes of a command's stdout, and of its stderr, kept for the model (first and last halves)",
    )
    mcp_config: Path | None = _setting(
        "VICTORIA_MCP_CONFIG",
        None,
        _existing_file,
        "a readable file",
        "a JSON file of MCP servers (``mcpServers``) whose tools Veronica offers (``runtime/mcpservers.py``)",
    )
    mcp_servers: tuple[McpServer, ...] = _setting(
        "VICTORIA_MCP_CONFIG",
        (),
        str,
        "",
        "the MCP servers of that file, read and checked at start",
        read=_mcp_servers,
    )
    mcp_call_timeout: float = _setting(
        "VICTORIA_MCP_CALL_TIMEOUT",
        DEFAULT_MCP_CALL_TIMEOUT,
        _positive_float,
        _SECONDS,
        "seconds one call of an MCP server's tool may take; then it is cancelled and fails",
    )
    approval: frozenset[str] = _setting(
        "VICTORIA_APPROVAL",
        frozenset(),
        _effects,
        "effects, comma-separated: write, execute, external",
        "the effects of tool calls that need a person's yes; ``execute`` is added when "
        "VICTORIA_SANDBOX is ``none``",
        shown="none",
    )
    approval_timeout: float | None = _setting(
        "VICTORIA_APPROVAL_TIMEOUT",
        None,
        _positive_float,
        _SECONDS,
        'seconds a tool call waits for a person\'s decision before it is denied ("timed out")',
        shown="the task's deadline",
    )
    delegate_timeout: float = _setting(
        "DELEGATE_VERONICA_TIMEOUT",
        DEFAULT_DELEGATE_TIMEOUT,
        _positive_float,
        _SECONDS,
        "seconds Victoria waits for Veronica before doing the work herself",
    )
    max_attempts: int = _setting(
        "VICTORIA_MAX_ATTEMPTS",
        DEFAULT_MAX_ATTEMPTS,
        _positive_int,
        _COUNT,
        "deliveries of one task before it fails for good",
    )
    ack_wait: float = _setting(
        "VICTORIA_ACK_WAIT",
        DEFAULT_ACK_WAIT,
        _positive_float,
        _SECONDS,
        "seconds without progress (an in-progress ack every quarter of it) before a task or model "
        "request goes to another instance; fencing makes a short one safe",
    )
    dedup_window: float = _setting(
        "VICTORIA_DEDUP_WINDOW",
        DEFAULT_DEDUP_WINDOW,
        _positive_float,
        _SECONDS,
        "seconds the task streams remember an append's ``Nats-Msg-Id`` (``duplicate_window``)",
    )
    allow_unfenced: bool = _setting(
        "VICTORIA_ALLOW_UNFENCED",
        False,
        _bool,
        "true or false",
        "run on a nats-server older than 2.11, which cannot fence appends",
    )
    instance: str = _setting(
        "VICTORIA_INSTANCE",
        lambda env: default_instance(),
        _instance,
        "[A-Za-z0-9_-]{1,48}",
        "this process's instance name in /services",
        shown="the host name",
    )
    heartbeat_interval: float = _setting(
        "VICTORIA_HEARTBEAT_INTERVAL",
        DEFAULT_HEARTBEAT_INTERVAL,
        _positive_float,
        _SECONDS,
        "seconds between heartbeats",
    )
    concurrency: int = _setting(
        "VICTORIA_CONCURRENCY", DEFAULT_CONCURRENCY, _positive_int, _COUNT, "tasks one Victoria runs at once"
    )
    llm_concurrency: int = _setting(
        "VICTORIA_LLM_CONCURRENCY",
        DEFAULT_LLM_CONCURRENCY,
        _positive_int,
        _COUNT,
        "model calls one LLM runner makes at once",
    )
    host: str = _setting(
        "VICTORIA_HOST", DEFAULT_HOST, str, "an address", "the gateway's listen address", read=_host
    )
    port: int = _setting("VICTORIA_PORT", DEFAULT_PORT, _port, "a TCP port", "the gateway's listen port")
    gateway_url: str = _setting(
        "VICTORIA_URL",
        DEFAULT_GATEWAY_URL,
        _url,
        "an http(s) URL",
        "where ``victoria run`` and ``status`` find the gateway",
    )
    log_level: str = _setting(
        "VICTORIA_LOG_LEVEL", "INFO", str, "DEBUG, INFO, WARNING or ERROR", "the log level", read=_log_level
    )
    restart_backoff: float = _setting(
        "VICTORIA_RESTART_BACKOFF",
        DEFAULT_RESTART_BACKOFF,
        _positive_float,
        _SECONDS,
        "seconds before the first restart of a crashed actor; doubles, to 30 s",
    )
    crash_loop_limit: int = _setting(
        "VICTORIA_CRASH_LOOP_LIMIT",
        DEFAULT_CRASH_LOOP_LIMIT,
        _positive_int,
        _COUNT,
        "restarts within VICTORIA_CRASH_LOOP_WINDOW after which an actor is left down",
    )
    crash_loop_window: float = _setting(
        "VICTORIA_CRASH_LOOP_WINDOW",
        DEFAULT_CRASH_LOOP_WINDOW,
        _positive_float,
        _SECONDS,
        "seconds over which restarts are counted",
    )
    max_steps_ceiling: int = _setting(
        "VICTORIA_MAX_STEPS",
        DEFAULT_MAX_STEPS_CEILING,
        _positive_int,
        _COUNT,
        "the most steps a task may take; a larger ``max_steps`` is lowered to it",
    )
    postgres_dsn: str | None = _setting(
        "VICTORIA_POSTGRES_DSN",
        None,
        _dsn,
        "a postgresql:// DSN",
        "the users' PostgreSQL (or DATABASE_URL, the old server's name); none by default",
        read=_postgres,
    )
    db_command_timeout: float = _setting(
        "VICTORIA_DB_COMMAND_TIMEOUT",
        DEFAULT_DB_COMMAND_TIMEOUT,
        _positive_float,
        _SECONDS,
        "seconds one PostgreSQL statement may take",
    )
    db_connect_timeout: float = _setting(
        "VICTORIA_DB_CONNECT_TIMEOUT",
        DEFAULT_DB_CONNECT_TIMEOUT,
        _positive_float,
        _SECONDS,
        "seconds one PostgreSQL connection may take to open",
    )
    startup_experts_timeout: float = _setting(
        "VICTORIA_STARTUP_EXPERTS_TIMEOUT",
        DEFAULT_STARTUP_EXPERTS_TIMEOUT,
        _positive_float,
        _SECONDS,
        "seconds one load of the experts may take",
    )
    startup_registry_timeout: float = _setting(
        "VICTORIA_STARTUP_REGISTRY_TIMEOUT",
        DEFAULT_STARTUP_REGISTRY_TIMEOUT,
        _positive_float,
        _SECONDS,
        "seconds one load of the project registry may take",
    )
    registry_refresh: float = _setting(
        "VICTORIA_REGISTRY_REFRESH",
        DEFAULT_REGISTRY_REFRESH,
        _positive_float,
        _SECONDS,
        "seconds between loads of experts and projects",
    )
    probe_interval: float = _setting(
        "VICTORIA_PROBE_INTERVAL",
        DEFAULT_PROBE_INTERVAL,
        _positive_float,
        _SECONDS,
        "seconds between probes of the model server (and PostgreSQL)",
    )
    probe_timeout: float = _setting(
        "VICTORIA_PROBE_TIMEOUT",
        DEFAULT_PROBE_TIMEOUT,
        _positive_float,
        _SECONDS,
        "seconds one probe may take",
    )
    probe_failures: int = _setting(
        "VICTORIA_PROBE_FAILURES",
        DEFAULT_PROBE_FAILURES,
        _positive_int,
        _COUNT,
        "failures in a row before a dependency is down",
    )
    probe_successes: int = _setting(
        "VICTORIA_PROBE_SUCCESSES",
        DEFAULT_PROBE_SUCCESSES,
        _positive_int,
        _COUNT,
        "successes in a row before it is up again",
    )
    api_token: str | None = _setting(
        "VICTORIA_API_TOKEN",
        None,
        _token,
        f"a token of {MIN_TOKEN_LENGTH} or more characters, no spaces",
        "a token every gateway route but /health and /ready asks for; what ``victoria run`` sends",
        secret=True,
        repr=False,
    )
    api_tokens_file: Path | None = _setting(
        "VICTORIA_API_TOKENS_FILE",
        None,
        _existing_file,
        "a readable file",
        "a file of tokens, one client a line (``name token``), read again when it changes",
    )
    replicas: int = _setting(
        "VICTORIA_REPLICAS",
        1,
        _replicas,
        "1 to 5",
        "copies of every stream and bucket made at start, each on its own server",
        shown="1 (`up --nodes 3`: 3)",
    )
    max_tasks_in_flight: int = _setting(
        "VICTORIA_MAX_TASKS_IN_FLIGHT",
        DEFAULT_MAX_TASKS_IN_FLIGHT,
        _count,
        "a count (0: no limit)",
        "tasks queued or running past which the gateway refuses new ones with 503 (0: no limit)",
    )
    trace_url: str | None = _setting(
        "VICTORIA_TRACE_URL",
        None,
        _trace_url,
        "an http(s) URL with {trace_id}",
        "one trace in a trace viewer, ``{trace_id}`` where its id goes; the dashboard links there",
    )
    llm_servers: tuple[ModelServer, ...] = _setting(
        "VICTORIA_LLM_URL",
        (),
        str,
        "",
        "every model server the runner may call (``[api:]url``, comma-separated)",
        read=lambda env: env.model_servers()[0],
    )
    models_file: Path | None = _setting(
        "VICTORIA_MODELS_FILE",
        None,
        _existing_file,
        "a readable file",
        "a TOML file of model servers (``runtime/modelservers.py``), which wins over VICTORIA_LLM_URL",
        read=lambda env: env.model_servers()[1],
    )
    model_max_wait: float = _setting(
        "VICTORIA_MODEL_MAX_WAIT",
        DEFAULT_MODEL_MAX_WAIT,
        _positive_float,
        _SECONDS,
        "seconds a call for a model that is not loaded waits while the loaded one still has work",
    )

    @property
    def servers(self) -> tuple[ModelServer, ...]:
        """The model servers, never empty."""
        return self.llm_servers or (ModelServer(url=self.llm_url, api=self.llm_api),)

    @property
    def approvals_needed(self) -> frozenset[str]:
        """The effects whose calls wait for a person's yes: ``VICTORIA_APPROVAL``, and ``execute``
        when commands run without a sandbox, on purpose (``VICTORIA_SANDBOX=none``)."""
        return self.approval | {"execute"} if self.sandbox == "none" else self.approval

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = _Environment(os.environ if environ is None else environ)
        values: dict[str, Any] = {name: setting.value(env) for name, setting in settings()}
        return cls(**values)

    @property
    def nats_url_file(self) -> Path:
        return self.data_dir / "nats.url"

    @property
    def nats_credentials_file(self) -> Path:
        """The NATS users' passwords, made by ``victoria up`` at its first start (mode 0600)."""
        return self.data_dir / "nats-credentials.json"
