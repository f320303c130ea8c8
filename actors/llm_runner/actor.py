"""The LLM runner: the only process that talks to model servers.

It takes ``llm_requested`` events from a durable consumer, calls the model server with a deadline,
and appends the answer as an ``llm_result`` event of the task. A result is stored before the request
is acknowledged, so a Victoria that dies while the model thinks finds the answer on resume, and the
model is not asked twice. Before each call, new or redelivered, the runner looks at the task's
history (one direct get): a request whose task has ended or been cancelled, or that a later attempt
has superseded, is not sent to the model. Each request's result subject takes one message, ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, defaultdict
from typing import Any, ClassVar, Final

import aiohttp
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from victoria.actors.llm_runner import fit, protocols, traits
from victoria.actors.llm_runner.scheduler import Lease, Scheduler, Slot, Waiter
from victoria.actors.llm_runner.servers import Registry, connect_failure
from victoria.actors.llm_runner.share import Share
from victoria.errors import (
    LLMContextError,
    LLMError,
    LLMHTTPError,
    LLMProtocolError,
    LLMTimeout,
    LLMToolsRefused,
    LLMUnavailable,
)
from victoria.events import contracts, subjects
from victoria.events.codec import encode
from victoria.runtime import fence, reads, tracing
from victoria.runtime.base import Actor
from victoria.runtime.config import Config
from victoria.runtime.consumer import WorkConsumer, delivered_event
from victoria.runtime.context import current_task_id, current_trace_id
from victoria.runtime.images import ImageStore
from victoria.runtime.protocol import AckSubject, parse_ack_subject

log = logging.getLogger(__name__)

CONNECT_RETRY_MAX: Final = 1.0  # seconds between attempts to reach a model server that is down
UNREACHABLE_GRACE: Final = 5.0  # seconds of refused connections before a call reports "unavailable"
_json: Final = msgspec.json.Encoder()
_JSON: Final = {"content-type": "application/json"}
MAX_DELIVER: Final = 5  # deliveries of one request to runners (runner crashes) before giving up
FRESH_FRACTION: Final = 0.25  # of the ack wait: a first delivery this young needs no read of the history
RECENTLY_ENDED: Final = 10_000  # cancelled or failed tasks remembered for fresh requests
HOLDING_ASK_TIMEOUT: Final = 0.5  # seconds for a runner calling for a request to say so
HOLDING_POLL: Final = 1.0  # seconds between looks for the answer of a request another runner calls
HOLDING_SLACK: Final = 30.0  # seconds past the call's own timeout that its holder is waited for


class LLMRunner(Actor):
    name: ClassVar[str] = "llm-runner"

    def __init__(self, nc: NATS, config: Config, *, restarts: int = 0, fenced: bool = True) -> None:
        super().__init__(nc, config, restarts=restarts, fenced=fenced)
        self.http: aiohttp.ClientSession | None = None
        self.consumers: list[WorkConsumer] = []
        self._subs: list[Subscription] = []
        self.images = ImageStore(self.js)
        self._calls: dict[str, set[asyncio.Task[contracts.LLMResult | str]]] = defaultdict(set)
        self._ended: OrderedDict[str, str] = OrderedDict()
        """Tasks lately cancelled or failed, as the live subscriptions saw them: id -> what."""
        self._holding: set[str] = set()
        """``<task_id> <request_id>`` of every call this instance makes or schedules now."""
        self._listening_since = 0  # time.time_ns() once those subscriptions are in place
        self._fresh_ns = int(self.config.ack_wait * FRESH_FRACTION * 1e9)
        self.scheduler = Scheduler(
            self.config.servers,
            max_wait=self.config.model_max_wait,
            concurrency=self.config.llm_concurrency,
            instance=self.instance,
            on_wait=self._on_wait,
            on_admit=self._on_admit,
        )
        self.registry: Registry | None = None
        self.share: Share | None = None
        self._endpoints = {
            key: slot.spec.url + protocols.endpoint(slot.spec.api)
            for key, slot in self.scheduler.slots.items()
        }

    async def on_start(self) -> None:
        # aiohttp rather than httpx here: this is the hot path, and httpx's connection pool cost
        # several times the CPU per call (bench/README.md has the figures).
        connector = aiohttp.TCPConnector(limit=self.config.llm_concurrency, limit_per_host=0)
        self.http = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            read_bufsize=1 << 20,  # one NDJSON line may carry a whole answer
        )
        self.scheduler.start()
        self.share = Share(self.js, self.scheduler, self.instance)
        try:
            await self.share.start()
        except Exception as exc:  # an older store without the bucket: this instance decides alone
            log.warning("model servers' shared state unavailable (%s); scheduling alone", exc)
            self.share = None
        self.registry = Registry(
            self.scheduler, instance=self.instance, idle_timeout=self.config.llm_idle_timeout
        )
        self.registry.start(self.share.kv if self.share is not None else None)
        for kind in ("cancel", "failed"):
            self._subs.append(await self.nc.subscribe(subjects.all_tasks_of_kind(kind), cb=self._on_ended))
        self._subs.append(await self.nc.subscribe(subjects.RUNNER_HOLDING, cb=self._on_holding))
        self._listening_since = time.time_ns()
        self.consumers = await self.consume_tasks(
            durable="llm-runner",
            kind="llm_request",
            concurrency=self.config.llm_concurrency,
            handler=self._handle,
            max_deliver=MAX_DELIVER + 1,
        )

    async def on_stop(self) -> None:
        await asyncio.gather(*(consumer.stop() for consumer in self.consumers))
        for sub in self._subs:
            await sub.unsubscribe()
        if self.registry is not None:
            await self.registry.stop()
        if self.share is not None:
            await self.share.stop()
        await self.scheduler.stop()
        if self.http is not None:
            await self.http.close()

    def in_flight(self) -> int:
        return sum(len(calls) for calls in self._calls.values())

    async def _on_ended(self, msg: Msg) -> None:
        """A task was cancelled (or failed): remember it a while, and abort its model calls."""
        try:
            task_id = subjects.task_id_of(msg.subject)
        except ValueError:
            return
        cancelled = msg.subject.endswith(".cancel")
        self._ended[task_id] = "the task was cancelled" if cancelled else "the task has ended"
        self._ended.move_to_end(task_id)
        while len(self._ended) > RECENTLY_ENDED:
            self._ended.popitem(last=False)
        if cancelled:
            for call in list(self._calls.get(task_id, ())):
                log.info("task %s cancelled: aborting its model call", task_id)
                call.cancel()

    async def _on_holding(self, msg: Msg) -> None:
        """Answer "mine" when this instance is calling (or scheduling) the model for the request."""
        if msg.reply and msg.data.decode(errors="replace") in self._holding:
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(self.instance.encode())

    async def _held_elsewhere(self, event: contracts.LLMRequested) -> str | None:
        """The runner instance that is calling the model for this request now, if any answers."""
        try:
            reply = await self.nc.request(
                subjects.RUNNER_HOLDING, _holding_key(event).encode(), timeout=HOLDING_ASK_TIMEOUT
            )
        except (nats.errors.Error, TimeoutError):
            return None  # nobody: the holder died (or never was), so this one calls
        return reply.data.decode(errors="replace") or "another runner"

    async def _await_holder(self, event: contracts.LLMRequested, holder: str) -> bool:
        """Wait while ``holder`` calls the model for this request: True once its answer is stored,
        False when nobody holds the request any more (then this instance calls). The message is
        kept alive meanwhile by the consumer's in-progress acks."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + event.timeout_s + HOLDING_SLACK
        log.info(
            "task %s request %s: %s is calling the model for it; waiting",
            event.task_id,
            event.request_id,
            holder,
        )
        while loop.time() < deadline:
            await asyncio.sleep(HOLDING_POLL)
            if await reads.last_llm_result(self.js, event.task_id, event.request_id) is not None:
                return True
            if await self._held_elsewhere(event) is None:
                return await reads.last_llm_result(self.js, event.task_id, event.request_id) is not None
        return False

    async def _handle(self, msg: Msg) -> None:
        event = await delivered_event(
            self.js, msg, contracts.LLMRequested, consumer="llm-runner", reason="not an llm_requested event"
        )
        if event is None:
            return
        task_token = current_task_id.set(event.task_id)
        trace_token = current_trace_id.set(tracing.trace_id_in((msg.headers or {}).get("traceparent")))
        try:
            await self._answer(msg, event)
        finally:
            current_task_id.reset(task_token)
            current_trace_id.reset(trace_token)

    async def _answer(self, msg: Msg, event: contracts.LLMRequested) -> None:
        ack = parse_ack_subject(msg.reply)
        deliveries = ack.delivered if ack is not None else reads.delivery_count(msg)
        unwanted = await self._unwanted(event, msg, ack)
        if unwanted is not None:
            log.info(
                "task %s request %s not sent to the model: %s", event.task_id, event.request_id, unwanted
            )
            await msg.ack()
            return
        if 1 < deliveries <= MAX_DELIVER:
            # Delivered again without a runner's death (a NATS server went away, and in-progress
            # acks with it): the first holder may still be calling. Paying twice is what this avoids.
            holder = await self._held_elsewhere(event)
            if holder is not None and await self._await_holder(event, holder):
                log.info("task %s request %s answered by %s", event.task_id, event.request_id, holder)
                await msg.ack()
                return
            log.info(
                "task %s request %s delivered again (%d) and unanswered: calling the model for it",
                event.task_id,
                event.request_id,
                deliveries,
            )
        holding = _holding_key(event)
        self._holding.add(holding)
        try:
            await self._call_and_store(msg, event, ack, deliveries)
        finally:
            self._holding.discard(holding)

    async def _call_and_store(
        self, msg: Msg, event: contracts.LLMRequested, ack: AckSubject | None, deliveries: int
    ) -> None:
        if deliveries > MAX_DELIVER:
            result = contracts.LLMResult(
                task_id=event.task_id,
                request_id=event.request_id,
                ok=False,
                error=f"model call abandoned after {MAX_DELIVER} deliveries (the runner kept dying)",
                error_kind="protocol",
                instance=self.instance,
            )
        else:
            seq = ack.stream_seq if ack is not None else reads.stream_sequence(msg)
            call = asyncio.ensure_future(self._scheduled(event, msg, seq))
            calls = self._calls[event.task_id]
            calls.add(call)
            try:
                scheduled = await call
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if call.cancelled() and current is not None and not current.cancelling():
                    await msg.ack()  # the task was cancelled: nobody wants this answer
                    return
                raise
            finally:
                calls.discard(call)
                if not calls:
                    self._calls.pop(event.task_id, None)
            if isinstance(scheduled, str):
                log.info(
                    "task %s request %s not sent to the model after waiting for it: %s",
                    event.task_id,
                    event.request_id,
                    scheduled,
                )
                await msg.ack()
                return
            result = scheduled
        result = msgspec.structs.replace(result, purpose=event.purpose)  # what it answers, for readers
        if not await fence.append_result(self.nc, result, headers=_trace_headers(msg)):
            log.info(
                "task %s request %s: an answer is stored already; this one is dropped",
                event.task_id,
                event.request_id,
            )
        await msg.ack()

    async def _scheduled(
        self, event: contracts.LLMRequested, msg: Msg, seq: int
    ) -> contracts.LLMResult | str:
        """The call, once the scheduler gives it a server; or why nobody wants it after its wait."""
        model = event.model or self.config.model
        started = time.monotonic()
        lease = await self.scheduler.acquire(model, task_id=event.task_id, request_id=event.request_id)
        try:
            if time.monotonic() - started > self.config.ack_wait * FRESH_FRACTION:
                # It waited for its model: the task may have ended meanwhile.
                unwanted = self._ended.get(event.task_id) or await self._read_unwanted(event, seq)
                if unwanted is not None:
                    return unwanted
            return await self.call(event, tracing.context_from(msg.headers), lease=lease)
        finally:
            self.scheduler.release(lease)

    def _on_wait(self, waiter: Waiter, place: int) -> None:
        self._progress(waiter, place=place, waited_s=round(time.monotonic() - waiter.since, 2))

    def _on_admit(self, waiter: Waiter, slot: Slot) -> None:
        if not waiter.noticed:
            return  # placed before anybody was told it waits
        self._progress(waiter, waiting=False, server=slot.spec.url, server_up=slot.up)
        for other in self.scheduler.waiting:  # those behind it move up
            if other.model == waiter.model and other is not waiter:
                self.scheduler.notice(other)

    def _progress(self, waiter: Waiter, **said: Any) -> None:
        """Tell the waiter's task where its model call stands: ``said`` are more fields of
        ``contracts.ModelWait`` (``place``, ``waiting``, ...)."""
        wait = contracts.ModelWait(
            task_id=waiter.task_id,
            request_id=waiter.request_id,
            model=waiter.model,
            instance=self.instance,
            **said,
        )
        if not wait.task_id or not self.nc.is_connected:
            return
        task = asyncio.ensure_future(self.nc.publish(subjects.progress(wait.task_id), encode(wait)))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _unwanted(self, event: contracts.LLMRequested, msg: Msg, ack: AckSubject | None) -> str | None:
        """Why nobody waits for this request's answer any more, or None when somebody does.

        The attempt that stored a request writes nothing more until its answer comes, so the
        request is wanted while it is the last event of the task's own history (one direct get),
        or when only a newer attempt's start follows it (that attempt takes up the requests it
        finds waiting). Anything else after it means the task ended, was cancelled, or went on
        without it (a resumed attempt that asks again under a new id).

        A first delivery within a quarter of the ack wait of the request's storing needs no read:
        a newer attempt exists only after its holder was silent for half the ack wait, and what
        else can end the task meanwhile (a cancel request, a failure) reaches this runner on its
        live subscriptions, which were in place when the request was stored. Freshness is the
        stream's timestamp against this host's clock; clocks that disagree by more than that
        quarter only cost a read, or (a clock behind) one wasted call for a superseded request."""
        redelivered = ack is None or ack.delivered > 1
        fresh = (
            not redelivered
            and ack is not None
            and ack.timestamp_ns >= self._listening_since + self._fresh_ns
            and time.time_ns() - ack.timestamp_ns < self._fresh_ns
        )
        if fresh:
            return self._ended.get(event.task_id)
        seq = ack.stream_seq if ack is not None else reads.stream_sequence(msg)
        if redelivered and await reads.last_llm_result(self.js, event.task_id, event.request_id) is not None:
            return "it is answered already"
        return await self._read_unwanted(event, seq)

    async def _read_unwanted(self, event: contracts.LLMRequested, seq: int) -> str | None:
        """What came after the request (stored at ``seq``) in the task's history, if it makes the
        request unwanted (one direct get)."""
        return await reads.unwanted_after(self.js, event.task_id, seq)

    async def call(
        self, event: contracts.LLMRequested, parent: Context | None = None, *, lease: Lease | None = None
    ) -> contracts.LLMResult:
        """One model call with a deadline, streamed; its tokens go out as they arrive. Without a
        ``lease``, the scheduler is asked for a server first (and the wait is not timed)."""
        model = event.model or self.config.model
        if lease is None:
            lease = await self.scheduler.acquire(model, task_id=event.task_id, request_id=event.request_id)
            try:
                return await self.call(event, parent, lease=lease)
            finally:
                self.scheduler.release(lease)
        timeout = min(event.timeout_s, self.config.llm_timeout)
        started = time.monotonic()
        base = contracts.LLMResult(task_id=event.task_id, request_id=event.request_id, ok=False, model=model)
        unreachable: list[str] = []
        span = tracing.tracer().start_span(
            f"chat {model}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.system": lease.slot.spec.api,
                "gen_ai.request.model": model,
                "server.address": lease.slot.spec.url,
                "victoria.task_id": event.task_id,
                "victoria.request_id": event.request_id,
            },
        )
        tokens = _TokenPublisher(self.nc, event)
        sent = _Sent()
        try:
            try:
                async with asyncio.timeout(timeout):
                    completion = await self._call_until_reachable(
                        event, model, lease, unreachable, tokens, sent
                    )
            except LLMError as exc:  # before TimeoutError: LLMTimeout is one
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                return self._failed(base, exc, started)
            except TimeoutError:
                url = self._endpoints[lease.slot.key]
                if tokens.pieces:
                    # It streamed until the call's deadline: the answer so far is the answer.
                    completion = protocols.Completion(
                        content=tokens.text(),
                        model=model,
                        prompt_tokens=None,
                        completion_tokens=None,
                        finish_reason="length",
                    )
                    log.info(
                        "task %s request %s cut at the call's deadline of %gs after %d tokens",
                        event.task_id,
                        event.request_id,
                        timeout,
                        tokens.pieces,
                    )
                else:
                    err: LLMError = LLMTimeout(
                        f"model server at {url} sent no first token within {timeout:g}s", url=url
                    )
                    if unreachable:
                        err = self._unreachable(lease.slot, url, time.monotonic() - started, unreachable[-1])
                    span.set_status(Status(StatusCode.ERROR, str(err)))
                    return self._failed(base, err, started)
            await tokens.close()
            url = self._endpoints[lease.slot.key]
            duration = time.monotonic() - started
            ttft = round(tokens.first_at - started, 4) if tokens.first_at else None
            if self.registry is not None:
                self.registry.record(
                    lease.slot, model, ttft=ttft, duration=duration, tokens=completion.completion_tokens
                )
                self.registry.estimator(lease.slot, model).learn(
                    sent.messages, completion.prompt_tokens, fit.tool_tokens(event.tools)
                )
            span.set_attribute("gen_ai.response.model", completion.model)
            if completion.prompt_tokens is not None:
                span.set_attribute("gen_ai.usage.input_tokens", completion.prompt_tokens)
            if completion.completion_tokens is not None:
                span.set_attribute("gen_ai.usage.output_tokens", completion.completion_tokens)
            if completion.finish_reason is not None:
                span.set_attribute("gen_ai.response.finish_reasons", [completion.finish_reason])
            if ttft is not None:
                span.set_attribute("victoria.time_to_first_token_s", ttft)
            span.set_attribute("victoria.duration_s", round(duration, 4))
            if completion.finish_reason == "length" and tokens.pieces:
                log.info(
                    "task %s request %s: the answer was cut at its cap of %s tokens; it is used as it stands",
                    event.task_id,
                    event.request_id,
                    sent.max_tokens,
                )
            elif completion.finish_reason == "interrupted":
                log.warning(
                    "task %s request %s: model server %s ended the answer early without saying why "
                    "(llama-cpp-python does so when another request reaches it); it is used as it stands",
                    event.task_id,
                    event.request_id,
                    url,
                )
            log.debug(
                "task %s request %s answered by %s in %.3fs",
                event.task_id,
                event.request_id,
                completion.model,
                duration,
            )
            return contracts.LLMResult(
                task_id=event.task_id,
                request_id=event.request_id,
                ok=True,
                content=completion.content,
                model=completion.model,
                url=url,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                duration_s=round(duration, 4),
                instance=self.instance,
                time_to_first_token_s=ttft,
                finish_reason=completion.finish_reason,
                max_tokens=sent.max_tokens,
                trimmed=sent.trimmed,
                tool_calls=list(completion.tool_calls),
            )
        finally:
            span.end()

    def cap(self, slot: Slot, model: str, purpose: str) -> int:
        """The output cap of a call: the models file's for the server and model, else VICTORIA_LLM_CAPS."""
        caps = dict(self.config.llm_caps)
        found = slot.spec.cap_for(model, purpose)
        if found is not None:
            return found
        return caps.get(purpose) or caps.get("step") or max(caps.values(), default=1024)

    async def _fitted(self, event: contracts.LLMRequested, model: str, slot: Slot) -> fit.Fitted:
        """The request's messages fitted to the model's context, with its output cap."""
        cap = self.cap(slot, model, event.purpose)
        if self.registry is None:
            return fit.Fitted(event.messages, cap, None, 0)
        await self.registry.model_traits(slot, model)
        context = self.registry.context_for(slot, model)
        return fit.fit(
            event.messages,
            context=context,
            cap=cap,
            estimator=self.registry.estimator(slot, model),
            extra=fit.tool_tokens(event.tools),
        )

    async def _call_until_reachable(
        self,
        event: contracts.LLMRequested,
        model: str,
        lease: Lease,
        unreachable: list[str],
        tokens: _TokenPublisher,
        sent: _Sent,
    ) -> protocols.Completion:
        """The call on ``lease``'s server. A server that refuses connections before answering is
        left for another that has the model, when there is one (the lease moves); else it is
        tried again for ``UNREACHABLE_GRACE`` seconds. A server that refuses the request as over
        its context, and names its context, is asked once more with the request fitted to it."""
        assert self.http is not None
        keys = {key for message in event.messages for key in message.images}
        pictures = {key: await self.images.base64_of(key) for key in sorted(keys)}
        delay = 0.25
        first_try = time.monotonic()
        tried: set[str] = set()
        refitted = False
        idle = self.config.llm_idle_timeout
        loop = asyncio.get_running_loop()
        while True:
            slot = lease.slot
            api = slot.spec.api
            url = self._endpoints[slot.key]
            if self.registry is not None:
                await self.registry.known(slot)
            model = self._model_there(event, model, slot, url)
            takes = (
                self.registry.takes_tools(slot, model)
                if self.registry is not None
                else slot.spec.tools_for(model)
            )
            if event.tools and takes is False:
                why = (
                    "tools = false in the models file"
                    if slot.spec.tools_for(model) is False
                    else "it says so"
                )
                raise LLMToolsRefused(
                    f"model server {slot.spec.url} does not take tools for {model} ({why}): ask without them",
                    url=url,
                )
            keep_alive = self.registry.keep_alive(slot, model) if self.registry is not None else None
            fitted = await self._fitted(event, model, slot)
            sent.messages, sent.max_tokens, sent.trimmed = fitted.messages, fitted.max_tokens, fitted.trimmed
            if fitted.trimmed:
                log.info("task %s request %s: %s", event.task_id, event.request_id, fitted.trimmed)
            body = protocols.request_body(
                api,
                model,
                fitted.messages,
                json_mode=event.json_mode,
                images=pictures,
                keep_alive=keep_alive,
                max_tokens=fitted.max_tokens,
                num_ctx=slot.spec.context if api == "ollama" else None,
                tools=event.tools,
            )
            streaming = self.registry is not None
            if self.registry is not None:  # from here the server works on it: nothing else is sent there
                await self.registry.call_starts(slot)
            try:
                async with asyncio.timeout(idle) as quiet:
                    async with self.http.post(url, data=_json.encode(body), headers=_JSON) as response:
                        unreachable.clear()
                        if response.status >= 400:
                            text = (await response.content.read(600)).decode("utf-8", "replace")
                            if event.tools and traits.refuses_tools(text):  # llama-server says so with a 500
                                raise LLMToolsRefused(
                                    f"model server at {url} does not take tools for {model} (HTTP "
                                    f"{response.status}: {text[:300]}): ask without them",
                                    url=url,
                                    status=response.status,
                                )
                            if not refitted and self._learned_context(slot, model, text, fitted):
                                refitted = True
                                continue
                            raise self._http_error(url, response.status, text, fitted)
                        reader = protocols.StreamReader(api, model, request_id=event.request_id)
                        try:
                            async for raw in response.content:
                                calls = reader.tool_pieces
                                piece = reader.feed(raw.decode("utf-8", "replace"))
                                if piece or reader.tool_pieces > calls:  # a tool call's pieces count too
                                    quiet.reschedule(loop.time() + idle)
                                    if self.registry is not None:
                                        self.registry.progressed(slot)
                                if piece:
                                    await tokens.add(piece)
                        except (LLMProtocolError, ValueError) as exc:  # ValueError: a line over read_bufsize
                            raise LLMProtocolError(f"{url}: {exc}", url=url) from None
                        if not reader.lines and not refitted and api == "openai":
                            # Nothing at all (llama-cpp-python streams an overflow so): ask why, once.
                            refitted = True
                            if await self._diagnose(url, body, slot, model, fitted):
                                continue
                        try:
                            return reader.completion()
                        except LLMProtocolError as exc:
                            raise LLMProtocolError(f"{url}: {exc}", url=url) from None
            except TimeoutError:
                if not quiet.expired():
                    raise  # the call's own deadline, outside
                if tokens.pieces:
                    raise LLMTimeout(
                        f"model server at {url} stalled after {tokens.pieces} tokens (none for {idle:g}s)",
                        url=url,
                    ) from None
                raise LLMTimeout(
                    f"model server at {url} sent no first token within {idle:g}s", url=url
                ) from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                if tokens.first_at is not None:
                    raise LLMProtocolError(f"{url}: the answer broke off: {exc}", url=url) from None
                unreachable.append(connect_failure(exc))
                tried.add(slot.key)
                if len(self.scheduler.slots) > 1:
                    self.scheduler.server_down(slot)
                    if self.scheduler.has_alternative(model, frozenset(tried)):
                        log.warning("model server %s unreachable (%s); the call goes to another", url, exc)
                        await self.scheduler.move(lease, exclude=frozenset(tried))
                        first_try, delay = time.monotonic(), 0.25
                        continue
                never = self.registry is not None and self.registry.status[slot.key] == "down"
                grace = 0.0 if never and not slot.last_served else UNREACHABLE_GRACE  # nobody there yet
                if time.monotonic() - first_try + delay > grace:
                    raise TimeoutError from None  # reported as "unavailable": the task decides to wait
                log.warning("model server %s unreachable (%s); retrying in %.2fs", url, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, CONNECT_RETRY_MAX)
            finally:
                if streaming and self.registry is not None:
                    self.registry.stream_ended(slot)

    def _model_there(self, event: contracts.LLMRequested, model: str, slot: Slot, url: str) -> str:
        """The model to ask this server for. A server that serves one model only takes the
        default model's calls for its own; a model the task names that it does not serve is an
        error that says what it serves."""
        others = self.registry.served_instead(slot, model) if self.registry is not None else None
        if not others:
            return model
        if event.model is None and len(others) == 1:
            return others[0]
        raise LLMHTTPError(
            f"model {model!r} is not served by {slot.spec.url}: it serves {', '.join(others)} "
            "(name one of those, or set VICTORIA_MODEL)",
            url=url,
            status=404,
        )

    def _unreachable(self, slot: Slot, url: str, waited: float, why: str) -> LLMUnavailable:
        """The error of a call that found nobody at its server; for a server never reached, what to do."""
        never = self.registry is None or self.registry.status[slot.key] in ("unknown", "down")
        if never and not slot.last_served:
            return LLMUnavailable(
                f"no model server answers at {slot.spec.url} ({why}): start one there, or point "
                "VICTORIA_LLM_URL at yours (Ollama: http://HOST:11434; llama.cpp, llama-cpp-python, "
                "vLLM or mlx_lm.server: openai:http://HOST:PORT); the task waits for it",
                url=url,
            )
        return LLMUnavailable(f"model server at {url} unreachable for {waited:.1f}s: {why}", url=url)

    def _learned_context(self, slot: Slot, model: str, text: str, fitted: fit.Fitted) -> bool:
        """The server refused the request as over its context and named a smaller one than it
        was fitted to: remember it (True: fit again and ask once more)."""
        if self.registry is None or not traits.is_overflow(text):
            return False
        context = traits.context_from_error(text)
        known = self.registry.context_for(slot, model)
        if context is None or (known is not None and context >= known):
            return False
        log.info(
            "model server %s says %s holds %d tokens: the request is fitted to that",
            slot.spec.url,
            model,
            context,
        )
        self.registry.learn_context(slot, model, context)
        return True

    def _http_error(self, url: str, status: int, text: str, fitted: fit.Fitted) -> LLMError:
        if traits.is_overflow(text):
            context = traits.context_from_error(text)
            holds = f"; the model's context holds {context} tokens" if context else ""
            return LLMContextError(
                f"model server at {url} refused the request as longer than the model's context "
                f"(about {fitted.prompt_tokens} tokens asked, with {fitted.max_tokens} for the answer{holds}): "
                f"{text[:300]}",
                url=url,
                need=fitted.prompt_tokens,
                context=context or 0,
            )
        return LLMHTTPError(
            f"model server at {url} answered HTTP {status}: {text[:300]}", url=url, status=status
        )

    async def _diagnose(
        self, url: str, body: dict[str, Any], slot: Slot, model: str, fitted: fit.Fitted
    ) -> bool:
        """The stream ended without a word: the same request unstreamed, with one token to
        write, says why. True when it named the model's context (then the request is fitted to it)."""
        assert self.http is not None
        probe = {**body, "stream": False, "max_tokens": 1}
        probe.pop("stream_options", None)
        try:
            async with self.http.post(
                url, data=_json.encode(probe), headers=_JSON, timeout=aiohttp.ClientTimeout(total=30)
            ) as response:
                if response.status < 400:
                    log.info("model server %s answered the same request unstreamed", url)
                    return False
                text = (await response.content.read(600)).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("model server %s: no reason for its empty answer (%s)", url, exc or type(exc).__name__)
            return False
        log.info("model server %s said of its empty answer: %s", url, text[:200])
        if self._learned_context(slot, model, text, fitted):
            return True
        if traits.is_overflow(text):
            raise self._http_error(url, response.status, text, fitted)
        return False

    def _failed(self, base: contracts.LLMResult, error: LLMError, started: float) -> contracts.LLMResult:
        log.warning("task %s request %s failed: %s", base.task_id, base.request_id, error)
        kind = (
            error.kind
            if error.kind in ("unavailable", "timeout", "http_status", "protocol", "context")
            else "protocol"
        )
        return contracts.LLMResult(
            task_id=base.task_id,
            request_id=base.request_id,
            ok=False,
            model=base.model,
            error=str(error),
            error_kind=kind,  # type: ignore[arg-type]
            url=error.url,
            duration_s=round(time.monotonic() - started, 4),
            instance=self.instance,
            tools_refused=isinstance(error, LLMToolsRefused),
        )


def _trace_headers(msg: Msg) -> dict[str, str] | None:
    if not msg.headers or "traceparent" not in msg.headers:
        return None
    return {"traceparent": msg.headers["traceparent"]}


class _TokenPublisher:
    """Sends model output as it is written, in small batches, on plain NATS (best effort)."""

    FLUSH_EVERY: Final = 0.05  # seconds
    FLUSH_SIZE: Final = 256  # characters

    def __init__(self, nc: NATS, request: contracts.LLMRequested) -> None:
        self.nc = nc
        self.subject = subjects.tokens(request.task_id)
        self.task_id = request.task_id
        self.request_id = request.request_id
        self.purpose = request.purpose
        self.seq = 0
        self.buffer: list[str] = []
        self.size = 0
        self.last_flush = time.monotonic()
        self.first_at: float | None = None
        self.pieces = 0
        """Pieces of text received: a token each, for the servers that stream one at a time."""
        self._all: list[str] = []

    def text(self) -> str:
        """Everything received so far."""
        return "".join(self._all)

    async def add(self, text: str) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
        self.pieces += 1
        self._all.append(text)
        self.buffer.append(text)
        self.size += len(text)
        if self.size >= self.FLUSH_SIZE or time.monotonic() - self.last_flush >= self.FLUSH_EVERY:
            await self._flush(done=False)

    async def close(self) -> None:
        await self._flush(done=True)

    async def _flush(self, *, done: bool) -> None:
        if not self.buffer and not done:
            return
        chunk = contracts.TokenChunk(
            task_id=self.task_id,
            request_id=self.request_id,
            seq=self.seq,
            text="".join(self.buffer),
            done=done,
            purpose=self.purpose,
        )
        self.seq += 1
        self.buffer, self.size, self.last_flush = [], 0, time.monotonic()
        if self.nc.is_connected:
            with contextlib.suppress(Exception):  # tokens are a view; the stored result is the truth
                await self.nc.publish(self.subject, encode(chunk))


class _Sent:
    """What the call last sent: the fitted messages, the cap, what was left out."""

    __slots__ = ("max_tokens", "messages", "trimmed")

    def __init__(self) -> None:
        self.messages: list[contracts.ChatMessage] = []
        self.max_tokens: int | None = None
        self.trimmed: str | None = None


def _holding_key(event: contracts.LLMRequested) -> str:
    return f"{event.task_id} {event.request_id}"
