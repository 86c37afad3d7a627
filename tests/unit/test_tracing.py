"""Tracing is off and free unless an OTLP endpoint is set (issue 20)."""

from __future__ import annotations

import pytest

from jewel_dagster import tracing
from jewel_dagster.defs.run_traces import build_run_trace_sensors


def test_off_without_an_endpoint_no_tag_and_no_sensor(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.setenv(name, "")  # empty counts as unset
    assert not tracing.tracing_enabled()
    assert not tracing.configure_tracing("test")
    with tracing.tracer().start_as_current_span("nothing") as span:
        assert not span.is_recording()
        assert tracing.traceparent_tags() == {}  # no run tag written
    assert build_run_trace_sensors() == []


def test_on_with_an_endpoint_one_sensor_per_ending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert tracing.tracing_enabled()
    names = sorted(s.name for s in build_run_trace_sensors())
    assert names == ["trace_runs_canceled", "trace_runs_failure", "trace_runs_success"]


def test_a_run_tag_carries_the_parent_into_the_pipeline() -> None:
    tags = {tracing.TRACEPARENT_TAG: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with tracing.run_context(tags):
        from opentelemetry import trace

        parent = trace.get_current_span().get_span_context()
    assert format(parent.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert format(parent.span_id, "016x") == "b7ad6b7169203331"
