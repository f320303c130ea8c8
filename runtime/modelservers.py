"""The model servers a runner may call: parsed from ``VICTORIA_LLM_URL`` or a models file.

``VICTORIA_LLM_URL`` takes one URL or a comma-separated list; each entry may name its protocol
first (``openai:http://mlx:8080``, ``ollama:http://studio:11434``), else ``VICTORIA_LLM_API``
applies. ``VICTORIA_MODELS_FILE`` names a TOML file that says more, per server::

    [[server]]
    url = "http://127.0.0.1:11434"
    api = "ollama"                 # or "openai"
    max_loaded = 1                 # models it holds in memory at once
    parallel = 4                   # calls at once per model (default: no limit of ours)
    models = ["qwen3:30b"]         # optional: otherwise asked of the server (/api/tags, /v1/models)
    keep_alive = "30m"             # optional: Ollama keep_alive for every model of this server
    context = 8192                 # optional: the context window, tokens (else asked of the server)
    [server.limits]                # optional: calls at once for one model
    "qwen3:30b" = 1
    [server.caps]                  # optional: output caps, tokens, by purpose (VICTORIA_LLM_CAPS)
    plan = 1024
    [server.caps."qwen3:30b"]      # ... and for one model of it
    answer = 4096

and ``tools = false`` when the server does not take tool definitions (the agent then writes its
tool calls as JSON in text), or per model, as a table instead: ``[server.tools]`` with
``"llama3.2" = false``.

When the file is given it wins over ``VICTORIA_LLM_URL``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

Api = Literal["ollama", "openai"]
_URL = re.compile(r"^https?://[^\s/,]+")
CAP_PURPOSES: Final = ("understand", "plan", "step", "answer")
"""The purposes an output cap is set for (``contracts.PURPOSES``)."""
Caps = tuple[tuple[str, int], ...]
"""Output caps, tokens, by purpose."""


@dataclass(frozen=True, slots=True)
class ModelServer:
    url: str
    """Base URL, without a trailing slash."""
    api: Api = "ollama"
    max_loaded: int = 1
    """Models the server holds in memory at once: a call for another one makes it swap."""
    parallel: int | None = None
    """Calls at once for one model on this server; None: no limit of ours (the server queues)."""
    models: tuple[str, ...] | None = None
    """The models it serves, when the models file says so; None: asked of the server."""
    keep_alive: str | None = None
    """Ollama ``keep_alive`` for every call to this server; None: by the model's size."""
    limits: tuple[tuple[str, int], ...] = ()
    """Calls at once for one model, overriding ``parallel``."""
    context: int | None = None
    """The context window of its models, tokens; None: what the server says."""
    caps: Caps = ()
    """Output caps by purpose for every model of this server, over ``VICTORIA_LLM_CAPS``."""
    model_caps: tuple[tuple[str, Caps], ...] = ()
    """Output caps by purpose for one model, over ``caps``."""
    tools: bool | None = None
    """Whether its models take tool definitions (the protocol's ``tools``); None: not said."""
    model_tools: tuple[tuple[str, bool], ...] = ()
    """The same for one model, over ``tools``."""

    def limit_for(self, model: str) -> int | None:
        return next((n for name, n in self.limits if name == model), self.parallel)

    def cap_for(self, model: str, purpose: str) -> int | None:
        """The models file's output cap for a call, when it sets one."""
        for name, caps in self.model_caps:
            if name == model:
                found = dict(caps).get(purpose)
                if found is not None:
                    return found
        return dict(self.caps).get(purpose)

    def tools_for(self, model: str) -> bool | None:
        """Whether the models file says ``model`` takes tool definitions here; None: it does not say."""
        return next((said for name, said in self.model_tools if name == model), self.tools)

    @property
    def key(self) -> str:
        """A name fit for a subject token or a key-value key: the URL's host, port and path."""
        bare = self.url.split("://", 1)[-1]
        return re.sub(r"[^A-Za-z0-9_-]", "_", bare)[:64] or "server"


def parse_urls(raw: str, default_api: Api) -> tuple[ModelServer, ...]:
    """``VICTORIA_LLM_URL``: one or more ``[api:]url`` entries, comma-separated."""
    servers: list[ModelServer] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        api: Api = default_api
        for name in ("ollama", "openai"):
            if entry.startswith(name + ":") and not entry.startswith(name + "://"):
                api = "ollama" if name == "ollama" else "openai"
                entry = entry[len(name) + 1 :]
        if not _URL.match(entry):
            raise ValueError(entry)
        servers.append(ModelServer(url=entry.rstrip("/"), api=api))
    if not servers:
        raise ValueError(raw)
    if len({s.url for s in servers}) != len(servers):
        raise ValueError("a URL is listed twice")
    return tuple(servers)


def load_file(path: Path, default_api: Api) -> tuple[ModelServer, ...]:
    """The models file (TOML, ``[[server]]`` tables); ValueError naming what is wrong."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    entries = data.get("server")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected one or more [[server]] tables")
    servers = tuple(_server(entry, default_api, f"{path}: server {n + 1}") for n, entry in enumerate(entries))
    if len({s.url for s in servers}) != len(servers):
        raise ValueError(f"{path}: a URL is listed twice")
    return servers


def _server(entry: Any, default_api: Api, where: str) -> ModelServer:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a table")
    url = entry.get("url")
    if not isinstance(url, str) or not _URL.match(url):
        raise ValueError(f"{where}: url must be an http(s) URL")
    api = entry.get("api", default_api)
    if api not in ("ollama", "openai"):
        raise ValueError(f"{where}: api must be ollama or openai")
    max_loaded = entry.get("max_loaded", 1)
    parallel = entry.get("parallel")
    models = entry.get("models")
    keep_alive = entry.get("keep_alive")
    limits = entry.get("limits", {})
    context = entry.get("context")
    caps, model_caps = _caps(entry.get("caps", {}), where)
    tools = entry.get("tools")
    model_tools = tools if isinstance(tools, dict) else {}
    if not isinstance(max_loaded, int) or max_loaded < 1:
        raise ValueError(f"{where}: max_loaded must be a positive integer")
    if parallel is not None and (not isinstance(parallel, int) or parallel < 1):
        raise ValueError(f"{where}: parallel must be a positive integer")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise ValueError(f"{where}: models must be a list of names")
    if keep_alive is not None and not isinstance(keep_alive, str | int):
        raise ValueError(f"{where}: keep_alive must be a duration such as 30m")
    if not isinstance(limits, dict) or not all(isinstance(v, int) and v > 0 for v in limits.values()):
        raise ValueError(f"{where}: limits must map model names to positive integers")
    if context is not None and (not isinstance(context, int) or context < 256):
        raise ValueError(f"{where}: context must be a number of tokens, 256 or more")
    if not isinstance(tools, bool | dict | None) or not all(
        isinstance(v, bool) for v in model_tools.values()
    ):
        raise ValueError(f"{where}: tools must be true or false, or a table of model names = true or false")
    return ModelServer(
        url=url.rstrip("/"),
        api="ollama" if api == "ollama" else "openai",
        max_loaded=max_loaded,
        parallel=parallel,
        models=tuple(models) if models is not None else None,
        keep_alive=str(keep_alive) if keep_alive is not None else None,
        limits=tuple((str(k), int(v)) for k, v in limits.items()),
        context=context,
        caps=caps,
        model_caps=model_caps,
        tools=tools if isinstance(tools, bool) else None,
        model_tools=tuple((str(k), v) for k, v in model_tools.items()),
    )


def parse_caps(raw: str) -> Caps:
    """``VICTORIA_LLM_CAPS``: ``purpose=tokens`` pairs, comma-separated; ValueError naming the bad one."""
    pairs: dict[str, int] = {}
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        purpose, _, tokens = entry.partition("=")
        pairs[purpose.strip()] = _tokens(tokens.strip(), purpose.strip())
    return _checked(pairs, "VICTORIA_LLM_CAPS")


def _tokens(value: object, purpose: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"the cap of {purpose} must be a positive number of tokens")
    return value


def _checked(pairs: dict[str, int], where: str) -> Caps:
    unknown = sorted(set(pairs) - set(CAP_PURPOSES))
    if unknown:
        raise ValueError(f"{where}: {', '.join(unknown)}: caps are set for {', '.join(CAP_PURPOSES)}")
    return tuple(sorted(pairs.items()))


def _caps(table: Any, where: str) -> tuple[Caps, tuple[tuple[str, Caps], ...]]:
    """``[server.caps]``: purpose = tokens, and model tables of the same."""
    if not isinstance(table, dict):
        raise ValueError(f"{where}: caps must be a table of purpose = tokens")
    own: dict[str, int] = {}
    models: list[tuple[str, Caps]] = []
    try:
        for key, value in table.items():
            if isinstance(value, dict):
                pairs = {str(p): _tokens(v, str(p)) for p, v in value.items()}
                models.append((str(key), _checked(pairs, f"{where}: caps of {key}")))
            else:
                own[str(key)] = _tokens(value, str(key))
        return _checked(own, f"{where}: caps"), tuple(models)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}" if not str(exc).startswith(where) else str(exc)) from None
