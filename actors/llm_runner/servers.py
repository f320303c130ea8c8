"""What each model server has and holds, refreshed in the background; latency of recent calls.

Every ``REFRESH`` seconds, for each server: Ollama's ``/api/tags`` (the models it has, with their
sizes) and ``/api/ps`` (the models loaded now); an OpenAI-compatible server's ``/v1/models`` (it
cannot say what is loaded: the model of the last call it served stands for that). A server that
does not answer is down for the scheduler until it answers again. What is found is written to the
bucket ``victoria_models`` under ``info.<server>.<instance>`` for ``/services`` and
``victoria models``.

Busy is not down. While a call of this instance is on a server (sent, and a token came within
the idle timeout), the server is ``busy``: a server that cannot answer a look meanwhile
(llama-cpp-python, whose every request cuts the running generation; mlx_lm.server, which has
one thread) is not asked at all, and a look at any other that times out says ``busy``, not
``down``. Looks go on a connection pool of their own, one at a time per server, so they never
wait behind the calls in the runner's pool. What the server can do (``traits.py``) is asked once,
when it first answers, and kept with its models' entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import statistics
import time
from collections import deque
from typing import Any, Final, Literal

import aiohttp
import msgspec
import nats.errors
from nats.js.kv import KeyValue

from victoria.actors.llm_runner import traits
from victoria.actors.llm_runner.fit import Estimator
from victoria.actors.llm_runner.scheduler import Scheduler, Slot
from victoria.events.contracts import ModelInfo, ModelServerInfo

log = logging.getLogger(__name__)

REFRESH: Final = 5.0  # seconds between looks at each server
REQUEST_TIMEOUT: Final = 3.0  # seconds one look may take
RECENT: Final = 20  # calls per model that the latency figures are taken from
INFO_EVERY: Final = 30.0  # seconds: the info record is rewritten this often even when unchanged
KEEP_ALIVE_BIG: Final = "30m"  # Ollama keep_alive of a model of 20B parameters (or 12 GB) or more
KEEP_ALIVE_MEDIUM: Final = "15m"  # ... of 7B (or 4 GB) or more
KEEP_ALIVE_SMALL: Final = "5m"  # ... of smaller ones (Ollama's own default)
_encode: Final = msgspec.json.Encoder()


class _Model:
    __slots__ = (
        "asked",
        "context",
        "estimator",
        "latency",
        "parameter_size",
        "running_context",
        "size_bytes",
        "tools",
    )

    def __init__(self) -> None:
        self.size_bytes: int | None = None
        self.parameter_size: str | None = None
        self.latency: deque[tuple[float | None, float | None]] = deque(maxlen=RECENT)
        self.context: int | None = None
        """The context the server says the model has (Ollama /api/show, an overflow error)."""
        self.running_context: int | None = None
        """The context Ollama runs it with now (/api/ps)."""
        self.tools: bool | None = None
        self.asked = False
        """Its own traits were asked (Ollama /api/show)."""
        self.estimator = Estimator()


def parameters_billions(text: str | None) -> float | None:
    """``"30.5B"`` -> 30.5, ``"700M"`` -> 0.7; None when it cannot be read."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([BMK]?)\s*", text or "", re.IGNORECASE)
    if not match:
        return None
    scale = {"b": 1.0, "m": 1e-3, "k": 1e-6, "": 1e-9}[match.group(2).lower()]
    try:
        return float(match.group(1)) * scale
    except ValueError:
        return None


class Registry:
    def __init__(self, scheduler: Scheduler, *, instance: str, idle_timeout: float = 60.0) -> None:
        self.scheduler = scheduler
        self.instance = instance
        self.idle_timeout = idle_timeout
        self.http: aiohttp.ClientSession | None = None
        """The looks' own pool (made at start): never behind the calls in the runner's."""
        self.kv: KeyValue | None = None
        self.traits: dict[str, traits.Traits] = {key: traits.Traits() for key in scheduler.slots}
        self.status: dict[str, Literal["unknown", "up", "busy", "down"]] = {
            key: "unknown" for key in scheduler.slots
        }
        self.streaming: dict[str, int] = {key: 0 for key in scheduler.slots}
        """Server -> calls of this instance on it now (sent, waiting for a first token or streaming)."""
        self.progress_at: dict[str, float] = {key: 0.0 for key in scheduler.slots}
        """Server -> when one of those calls began or last got a token (time.time())."""
        self.models: dict[str, dict[str, _Model]] = {key: {} for key in scheduler.slots}
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Future[None]] = set()
        self._looking: dict[str, asyncio.Lock] = {key: asyncio.Lock() for key in scheduler.slots}
        self._written: dict[str, tuple[bytes, float]] = {}
        self.listed: dict[str, set[str]] = {key: set() for key in scheduler.slots}
        """Server -> the models it listed at its last look."""
        self.errors: dict[str, str | None] = {}
        """Server -> why its last look failed (None: it answered)."""
        for slot in scheduler.slots.values():
            if slot.spec.models is not None:
                slot.models = set(slot.spec.models)

    def start(self, kv: KeyValue | None) -> None:
        self.kv = kv
        if self.http is None:
            self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="model-servers")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.http is not None:
            await self.http.close()
            self.http = None

    # --- calls streaming ----------------------------------------------------------------------
    async def call_starts(self, slot: Slot) -> None:
        """A call is about to be sent. On a server that cannot answer while it generates, a look
        under way is let finish first (it is bounded by its timeout), so that no look reaches the
        server after the call and none waits behind it."""
        if self.traits[slot.key].answers_while_generating:
            self.stream_started(slot)
            return
        async with self._looking[slot.key]:
            self.stream_started(slot)

    def stream_started(self, slot: Slot) -> None:
        self.streaming[slot.key] += 1
        self.progress_at[slot.key] = time.time()
        if self.streaming[slot.key] == 1 and self.kv is not None:  # the monitor reads it: soon
            task = asyncio.ensure_future(self.write_info(slot))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    def progressed(self, slot: Slot) -> None:
        self.progress_at[slot.key] = time.time()

    def stream_ended(self, slot: Slot) -> None:
        self.streaming[slot.key] = max(0, self.streaming[slot.key] - 1)

    def serving(self, slot: Slot) -> bool:
        """A call of this instance streams from the server and got a token within the idle timeout."""
        return self.streaming[slot.key] > 0 and time.time() - self.progress_at[slot.key] < self.idle_timeout

    async def _loop(self) -> None:
        while True:
            await asyncio.gather(*(self.refresh(slot) for slot in self.scheduler.slots.values()))
            await asyncio.sleep(REFRESH)

    # --- looking at the servers ---------------------------------------------------------------
    async def _get(self, url: str) -> Any:
        assert self.http is not None
        async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as response:
            if response.status >= 400:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message=response.reason or ""
                )
            return await response.json(content_type=None)

    async def known(self, slot: Slot) -> None:
        """Before a call: a server not looked at yet (the runner has just started) is looked at
        now, so that the call is fitted to what it is."""
        if self.status[slot.key] == "unknown" and not self.serving(slot) and self.http is not None:
            async with self._looking[slot.key]:
                if self.status[slot.key] == "unknown":
                    await self._refresh(slot)

    async def refresh(self, slot: Slot) -> None:
        """One look at the server (one at a time per server)."""
        async with self._looking[slot.key]:
            await self._refresh(slot)

    async def _refresh(self, slot: Slot) -> None:
        known = self.models[slot.key]
        url = slot.spec.url + ("/api/tags" if slot.spec.api == "ollama" else "/v1/models")
        recent = time.time() - self.progress_at[slot.key] < REFRESH  # a task's next call comes soon
        if (self.serving(slot) or recent) and not self.traits[slot.key].answers_while_generating:
            if self.serving(slot):
                self._busy(slot, "not asked while a call streams from it")
            await self.write_info(slot)
            return
        listing: Any = None
        try:
            if slot.spec.api == "ollama":
                tags = await self._get(url)
                names = []
                for item in tags.get("models") or []:
                    name = str(item.get("name") or item.get("model") or "")
                    if not name:
                        continue
                    names.append(name)
                    model = known.setdefault(name, _Model())
                    size = item.get("size")
                    model.size_bytes = int(size) if isinstance(size, int) else None
                    details = item.get("details") or {}
                    model.parameter_size = details.get("parameter_size") or None
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    ps = await self._get(slot.spec.url + "/api/ps")
                    slot.loaded = [str(m.get("name") or m.get("model")) for m in ps.get("models") or []]
                    slot.loaded_source = "server"
                    running = traits.ollama_loaded_context(ps)
                    for name, model in known.items():
                        model.running_context = running.get(name)
            else:
                listing = await self._get(url)
                names = [str(item.get("id")) for item in listing.get("data") or [] if item.get("id")]
                for name in names:
                    known.setdefault(name, _Model())
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
            if isinstance(exc, TimeoutError) and (self.serving(slot) or self._remote_running(slot)):
                self._busy(slot, f"{url}: {_failure(exc)} while a call streams from it")
            else:
                self.errors[slot.key] = f"{url}: {_failure(exc)}"
                if slot.up:
                    log.warning(
                        "model server %s does not answer: %s", slot.spec.url, exc or type(exc).__name__
                    )
                self.status[slot.key] = "down"
                self.traits[slot.key] = traits.Traits()  # asked again when it is back: it may be another
                self.scheduler.server_down(slot)
        else:
            if not self.traits[slot.key].kind:
                assert self.http is not None
                found = await traits.discover(self._get, slot.spec.url, slot.spec.api, listing)
                self.traits[slot.key] = found
                slot.server_slots = found.slots
                log.info(
                    "model server %s is %s (context %s, slots %s)",
                    slot.spec.url,
                    found.kind,
                    found.context or "not told",
                    found.slots or "not told",
                )
            self.status[slot.key] = "busy" if self.serving(slot) else "up"
            self.errors[slot.key] = None
            self.listed[slot.key] = set(names)
            if slot.spec.models is None and names:
                slot.models = {*names, *_aliases(names)}
            if not slot.up:
                log.info("model server %s answers again", slot.spec.url)
            self.scheduler.server_up(slot)
        await self.write_info(slot)

    def mark_down(self, slot: Slot) -> None:
        self.scheduler.server_down(slot)

    def _busy(self, slot: Slot, why: str) -> None:
        if self.status[slot.key] != "busy":
            log.info("model server %s is busy: %s", slot.spec.url, why)
        self.status[slot.key] = "busy"
        self.errors[slot.key] = None

    def _remote_running(self, slot: Slot) -> bool:
        """Another runner instance says it has calls running on this server."""
        return any(slot.remote_work(model, running_only=True) for model in slot.models or ())

    # --- what the server can do ---------------------------------------------------------------
    async def model_traits(self, slot: Slot, model: str) -> None:
        """Ask once what one model can do (Ollama's /api/show), before its first call."""
        entry = self.models[slot.key].setdefault(model, _Model())
        if entry.asked or slot.spec.api != "ollama" or self.http is None:
            return
        entry.asked = True
        try:
            async with self.http.post(
                slot.spec.url + "/api/show",
                json={"model": model},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            ) as response:
                found = traits.ollama_show(await response.json(content_type=None)) if response.ok else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("model %s at %s not described: %s", model, slot.spec.url, exc)
            return
        if found is not None:
            entry.context, entry.tools = found.context, found.tools

    def context_for(self, slot: Slot, model: str) -> int | None:
        """The context window a request for ``model`` on this server is fitted to (None: not known)."""
        if slot.spec.context is not None:
            return slot.spec.context
        entry = self.models[slot.key].get(model)
        if slot.spec.api == "ollama":
            if entry is not None and entry.running_context:
                return entry.running_context
            trained = entry.context if entry is not None else None
            return min(trained or traits.OLLAMA_DEFAULT_CONTEXT, traits.OLLAMA_DEFAULT_CONTEXT)
        if entry is not None and entry.context:
            return entry.context
        return self.traits[slot.key].context

    def learn_context(self, slot: Slot, model: str, context: int) -> None:
        """An overflow error named the model's context window."""
        self.models[slot.key].setdefault(model, _Model()).context = context

    def estimator(self, slot: Slot, model: str) -> Estimator:
        return self.models[slot.key].setdefault(model, _Model()).estimator

    def served_instead(self, slot: Slot, model: str) -> list[str] | None:
        """The models a server that serves only what it lists has, when ``model`` is not one
        (llama-cpp-python, llama-server and vLLM answer any name with their own model, or refuse
        it); None when it may serve ``model``."""
        if self.traits[slot.key].kind not in ("llama-cpp-python", "llama.cpp", "vllm") or slot.spec.models:
            return None
        listed = self.listed[slot.key]
        if not listed or model in listed:
            return None
        return sorted(listed)

    def takes_tools(self, slot: Slot, model: str) -> bool | None:
        """Whether the server (or its model) is known to take a request's ``tools``: the models
        file first, then what the server said of the model (Ollama's capabilities) or of itself
        (llama-server's chat template; llama-cpp-python, which only puts them in its template);
        None: not known, so they are sent and a refusal is heard."""
        said = slot.spec.tools_for(model)
        if said is not None:
            return said
        entry = self.models[slot.key].get(model)
        if entry is not None and entry.tools is not None:
            return entry.tools
        return self.traits[slot.key].tools

    def interrupts(self, slot: Slot) -> bool:
        """Any other request cuts this server's running generation (llama-cpp-python)."""
        return self.traits[slot.key].kind == "llama-cpp-python"

    # --- what calls tell ----------------------------------------------------------------------
    def record(
        self, slot: Slot, model: str, *, ttft: float | None, duration: float, tokens: int | None
    ) -> None:
        """One call answered: its model is loaded there now; its latency counts."""
        slot.served(model)
        rate = None
        if tokens and ttft is not None and duration - ttft > 0:
            rate = tokens / (duration - ttft)
        self.models[slot.key].setdefault(model, _Model()).latency.append((ttft, rate))

    def keep_alive(self, slot: Slot, model: str) -> str | None:
        """Ollama ``keep_alive`` for a call: the models file's, or by the model's size."""
        if slot.spec.api != "ollama":
            return None
        if slot.spec.keep_alive is not None:
            return slot.spec.keep_alive
        info = self.models[slot.key].get(model)
        if info is None:
            return None
        billions = parameters_billions(info.parameter_size)
        gigabytes = info.size_bytes / 1e9 if info.size_bytes else None
        if (billions or 0) >= 20 or (gigabytes or 0) >= 12:
            return KEEP_ALIVE_BIG
        if (billions or 0) >= 7 or (gigabytes or 0) >= 4:
            return KEEP_ALIVE_MEDIUM
        if billions is None and gigabytes is None:
            return None
        return KEEP_ALIVE_SMALL

    def info(self, slot: Slot) -> ModelServerInfo:
        known = self.models[slot.key]
        names = sorted({*known, *(slot.models or ()), *slot.loaded})
        models = []
        for name in names:
            model = known.get(name)
            samples = list(model.latency) if model else []
            ttfts = [t for t, _ in samples if t is not None]
            rates = [r for _, r in samples if r is not None]
            models.append(
                ModelInfo(
                    name=name,
                    loaded=name in slot.loaded,
                    size_bytes=model.size_bytes if model else None,
                    parameter_size=model.parameter_size if model else None,
                    calls=len(samples),
                    ttft_s=round(statistics.median(ttfts), 4) if ttfts else None,
                    tokens_per_s=round(statistics.median(rates), 1) if rates else None,
                    listed=name in self.listed[slot.key] or name in (slot.spec.models or ()),
                    context=self.context_for(slot, name)
                    if model and (model.context or model.asked)
                    else None,
                    tools=model.tools if model else None,
                )
            )
        found = self.traits[slot.key]
        status = self.status[slot.key]
        if status == "busy" and not self.serving(slot) and not self._remote_running(slot):
            status = "up" if slot.up else "down"
        return ModelServerInfo(
            url=slot.spec.url,
            api=slot.spec.api,
            status=("up" if slot.up else "down") if status == "unknown" else status,
            models=models,
            loaded=list(slot.loaded),
            loaded_source=slot.loaded_source,
            swaps=slot.swaps,
            instance=self.instance,
            at=round(time.time(), 3),
            error=self.errors.get(slot.key),
            kind=found.kind,
            slots=found.slots,
            streaming=self.streaming[slot.key],
            progress_at=round(self.progress_at[slot.key], 3),
        )

    async def write_info(self, slot: Slot) -> None:
        if self.kv is None:
            return
        info = self.info(slot)
        body = _encode.encode(msgspec.structs.replace(info, at=0.0))
        last, at = self._written.get(slot.key, (b"", 0.0))
        if body == last and time.monotonic() - at < INFO_EVERY:
            return
        try:
            await self.kv.put(f"info.{slot.key}.{self.instance}", _encode.encode(info))
            self._written[slot.key] = (body, time.monotonic())
        except (nats.errors.Error, OSError) as exc:
            log.debug("info of %s not written: %s", slot.spec.url, exc)


def _failure(exc: BaseException) -> str:
    """A failed look at a server, named by what failed rather than by the HTTP client's class."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTPStatusError: {exc.status} {exc.message}"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return f"ConnectError: {connect_failure(exc)}"
    if isinstance(exc, TimeoutError):
        return f"TimeoutError: no answer within {REQUEST_TIMEOUT:g}s"
    return f"{type(exc).__name__}: {exc}"


def _aliases(names: list[str]) -> list[str]:
    """Ollama answers to ``llama3.2`` for ``llama3.2:latest``."""
    return [name.removesuffix(":latest") for name in names if name.endswith(":latest")]


def connect_failure(exc: BaseException) -> str:
    """Why a connection to a model server failed, in a few words."""
    cause = getattr(exc, "os_error", None)
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return f"{type(exc).__name__}: {exc or 'connection refused'}"
