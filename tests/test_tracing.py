"""Trace context in NATS headers (runtime/tracing.py), with no exporter configured."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from victoria.runtime import tracing


def propagated(span: trace.Span) -> dict[str, str]:
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def test_headers_of_a_span_that_records_nothing_are_what_the_w3c_propagator_writes() -> None:
    for flags, state in ((TraceFlags.SAMPLED, None), (TraceFlags.DEFAULT, TraceState([("vendor", "x1")]))):
        context = SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C,
            span_id=0x00F067AA0BA902B7,
            is_remote=True,
            trace_flags=TraceFlags(flags),
            trace_state=state,
        )
        span = NonRecordingSpan(context)
        assert tracing.headers_for(span) == propagated(span)


def test_a_traceparent_travels_through_headers_unchanged() -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    parent = tracing.context_from(None, traceparent)
    span = tracing.tracer().start_span("step", context=parent)
    assert tracing.headers_for(span) == {"traceparent": traceparent}
    assert tracing.trace_id_of(span) == "0af7651916cd43dd8448eb211c80319c"


def test_an_invalid_span_gives_no_headers() -> None:
    assert tracing.headers_for(trace.INVALID_SPAN) == {} == propagated(trace.INVALID_SPAN)
