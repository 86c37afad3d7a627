"""The Dagster run as a span of the request's trace, reported when the run ends.

A run is not one call that a span could wrap: it is launched by the gateway, queued, and executed
by a run worker. So its span is written after the fact, from the run's events (start and end
times, status), by a run status sensor per ending (success, failure, cancel), as a child of the
gateway's start span (the `jewel/traceparent` run tag). Only built when tracing is on
(`tracing.tracing_enabled()`): off, there is no sensor at all.
"""

from __future__ import annotations

import dagster as dg
from opentelemetry import trace

from jewel_dagster import tracing
from jewel_dagster.contract import PARTITION_TAG

# Each ending status and the run event that records it.
_ENDING_EVENTS = {
    dg.DagsterRunStatus.SUCCESS: dg.DagsterEventType.RUN_SUCCESS,
    dg.DagsterRunStatus.FAILURE: dg.DagsterEventType.RUN_FAILURE,
    dg.DagsterRunStatus.CANCELED: dg.DagsterEventType.RUN_CANCELED,
}


def report_run_span(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    status: dg.DagsterRunStatus,
    tracer: trace.Tracer | None = None,
) -> None:
    """One span from the run's start to its end (queue time before the start is not in it).

    Start, end and status come from the run's own events, not from its run record: Dagster
    stores an ending event before it updates the run record (`handle_new_event`), and the sensor
    reads the events, so it can act on a run whose record still says STARTED with no end time.
    Reading the record, the span of such a run was dropped (a CI failure of the trace test)."""
    ending = _ENDING_EVENTS[status]
    logs = instance.all_logs(run.run_id, of_type={dg.DagsterEventType.RUN_START, ending})
    starts = [log.timestamp for log in logs if log.dagster_event_type == dg.DagsterEventType.RUN_START]
    ends = [log.timestamp for log in logs if log.dagster_event_type == ending]
    if not starts or not ends:
        return  # ended before it started (cancelled in the queue): nothing ran to show
    attributes = tracing.span_attributes(
        run.tags.get(PARTITION_TAG), run.run_id, **{"dagster.job": run.job_name, "dagster.status": status.value}
    )
    with tracing.run_context(run.tags):
        span = (tracer or tracing.tracer()).start_span(
            f"run {run.job_name}", start_time=int(starts[0] * 1e9), attributes=attributes
        )
        span.end(end_time=int(ends[-1] * 1e9))


def _sensor(status: dg.DagsterRunStatus, interval_seconds: int) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        run_status=status,
        name=f"trace_runs_{status.value.lower()}",
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Writes each ended run as a span of its request's trace (OpenTelemetry).",
    )
    def trace_run(context: dg.RunStatusSensorContext) -> None:
        report_run_span(context.instance, context.dagster_run, status)

    return trace_run


def build_run_trace_sensors(interval_seconds: int = 5) -> list[dg.SensorDefinition]:
    """The sensors (RUN_TRACE_SENSOR_INTERVAL_SECONDS apart), when an OTLP endpoint is set; none otherwise."""
    return [_sensor(status, interval_seconds) for status in _ENDING_EVENTS] if tracing.tracing_enabled() else []
