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
    [server.limits]                # optional: calls at once for one model
    "qwen3:30b" = 1

When the file is given it wins over ``VICTORIA_LLM_URL``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Api = Literal["ollama", "openai"]
_URL = re.compile(r"^https?://[^\s/,]+")


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

    def limit_for(self, model: str) -> int | None:
        return next((n for name, n in self.limits if name == model), self.parallel)

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
    return ModelServer(
        url=url.rstrip("/"),
        api="ollama" if api == "ollama" else "openai",
        max_loaded=max_loaded,
        parallel=parallel,
        models=tuple(models) if models is not None else None,
        keep_alive=str(keep_alive) if keep_alive is not None else None,
        limits=tuple((str(k), int(v)) for k, v in limits.items()),
    )
