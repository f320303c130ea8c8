"""OpenTelemetry tracing, configured by the standard environment variables.

With ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, each process
exports its spans over OTLP/HTTP, with its own ``service.name`` (the actor's name). Without it the
API's no-op tracer is used, the SDK is never imported, and a task still gets a trace id: the gateway
makes one, so the status object and log records can carry it.

Context travels between processes in NATS headers as W3C ``traceparent``; a task's submission
keeps its ``traceparent``, so every attempt of the task, after any crash, joins the same trace.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from victoria.errors import ConfigError

log = logging.getLogger(__name__)

TRACER_NAME: Final = "victoria"
_propagator: Final = TraceContextTextMapPropagator()


def enabled(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )


class Tracing:
    """The process's tracer provider: set up by ``start()``, flushed by ``shutdown()``."""

    def __init__(self, service: str, instance: str, environ: Mapping[str, str] | None = None) -> None:
        self.service = service
        self.instance = instance
        self.environ = os.environ if environ is None else environ
        self.enabled = enabled(self.environ)
        self._provider: Any = None

    def start(self) -> None:
        if not self.enabled or self._provider is not None:
            return
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise ConfigError(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                f"tracing is configured but the OTLP/HTTP exporter is missing ({exc}); "
                "install it with: pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http",
            ) from None
        resource = Resource.create(
            {
                "service.name": self.service,
                "service.namespace": "victoria",
                "service.instance.id": f"{self.instance}/{os.getpid()}",
            }
        )
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=500))
        trace.set_tracer_provider(provider)
        self._provider = provider
        log.info("tracing to %s as %s", _endpoint(self.environ), self.service)

    def shutdown(self) -> None:
        provider, self._provider = self._provider, None
        if provider is not None:
            provider.shutdown()


def _endpoint(environ: Mapping[str, str]) -> str:
    return environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")


_tracer: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """The process's tracer. Made once: before a provider is set it is a proxy that follows the
    provider set later (``Tracing.start``)."""
    global _tracer
    if _tracer is None:
        _tracer = trace.get_tracer(TRACER_NAME)
    return _tracer


def root_context() -> Context:
    """A parent for a new trace: empty when spans are recorded, else a made-up sampled span context,
    so that even without an exporter the task has a trace id that travels with it."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        span_context = SpanContext(
            trace_id=int.from_bytes(secrets.token_bytes(16), "big") or 1,
            span_id=int.from_bytes(secrets.token_bytes(8), "big") or 1,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        return trace.set_span_in_context(NonRecordingSpan(span_context))
    return Context()


def context_from(headers: Mapping[str, str] | None, traceparent: str | None = None) -> Context:
    """The remote parent carried by NATS headers (or a stored ``traceparent``)."""
    carrier: dict[str, str] = {}
    if traceparent:
        carrier["traceparent"] = traceparent
    if headers:
        for key in ("traceparent", "tracestate"):
            if key in headers:
                carrier[key] = headers[key]
    return _propagator.extract(carrier)


def headers_for(span: Span) -> dict[str, str]:
    """W3C trace context headers naming ``span`` as the parent."""
    if not span.is_recording():
        # Tracing off (or not sampled): the span is its parent's context, written out directly;
        # the same text the propagator makes, at a fraction of the cost, once per stored event.
        context = span.get_span_context()
        if not context.is_valid:
            return {}
        headers = {
            "traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        }
        if context.trace_state:
            headers["tracestate"] = context.trace_state.to_header()
        return headers
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def trace_id_in(traceparent: str | None) -> str | None:
    """The trace id (32 hex digits) in a W3C traceparent, or None."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def trace_id_of(span: Span) -> str | None:
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.trace_id else None
