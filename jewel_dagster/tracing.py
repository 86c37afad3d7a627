"""OpenTelemetry tracing, on only when an OTLP endpoint is configured.

With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, the gateway and
the pipeline export spans over OTLP/HTTP: the start call (gateway), each model-service call (run
worker) and the Dagster run (reported when it ends). They share one trace: the gateway puts the
W3C `traceparent` of its start span into the run's tags, and the pipeline's spans are its
children; every span carries `workflow.id`, so a trace search by workflow finds them too.

Unset (the default), nothing is configured: OpenTelemetry's API then hands out non-recording
spans, which cost a function call, and no tag is written. Free of Dagster and FastAPI, so both
sides use it (like `log_format`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, propagate, trace

# The run tag that carries the start span's context into the run (W3C trace context).
TRACEPARENT_TAG = "jewel/traceparent"
WORKFLOW_ATTRIBUTE = "workflow.id"
RUN_ATTRIBUTE = "dagster.run_id"

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_configured = threading.Lock()
_done = False


def tracing_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether an OTLP endpoint is configured (empty counts as unset, like every setting here)."""
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in _ENDPOINT_VARIABLES)


def configure_tracing(service_name: str, batch: bool = True) -> bool:
    """Install the exporting tracer provider once per process, if an endpoint is set.

    `batch=False` exports each span as it ends: run workers may leave through `os._exit`, which
    would drop a batch still queued. The exporter's timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s by
    default) and the batch queue's bound keep a dead collector from stalling or growing anything.
    """
    global _done
    if not tracing_enabled():
        return False
    with _configured:
        if _done:
            return True
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        exporter = OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _done = True
        return True


def tracer() -> trace.Tracer:
    return trace.get_tracer("jewel-dagster")


def traceparent_tags() -> dict[str, str]:
    """The current span's context as a run tag; empty when tracing is off or no span is recording."""
    if not trace.get_current_span().is_recording():
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {TRACEPARENT_TAG: carrier["traceparent"]} if "traceparent" in carrier else {}


@contextmanager
def run_context(tags: Mapping[str, str]) -> Iterator[None]:
    """Make the start span (from the run's tags) the parent of the spans opened inside."""
    parent = tags.get(TRACEPARENT_TAG)
    if not parent:
        yield
        return
    token = context.attach(propagate.extract({"traceparent": parent}))
    try:
        yield
    finally:
        context.detach(token)


def span_attributes(workflow_id: str | None, run_id: str | None, **more: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {k: v for k, v in more.items() if v is not None}
    if workflow_id:
        attributes[WORKFLOW_ATTRIBUTE] = workflow_id
    if run_id:
        attributes[RUN_ATTRIBUTE] = run_id
    return attributes
