"""Figures read from Dagster's storage for /metrics: workflows, the run queue, the GPU pool,
model-service calls and the fidelity check.

Why read them rather than count them in the gateway: runs start from the Dagster UI and the
re-generation sensor too, end while no gateway watches, and several gateway replicas may run.
Dagster's run and event storage (SQLite or PostgreSQL, through the public `DagsterInstance`
API, as `gateway.dagster_api.storage_reader` does) is the one place that sees them all, so every
replica reports the same global figures: dashboards take `max` over replicas, never `sum`.

Cost: one refresh at most every `METRICS_CACHE_SECONDS` (a scrape in between gets the cached
figures): 18 indexed counts, one pool query, and the run status changes since the last refresh
(Dagster's cursor over the event log, as run status sensors use), each finished run's model-call
and check events read once. Counters come in two kinds:

- totals over the whole storage (`jewel_workflows_*_total`): exact after a restart;
- from events seen since this replica started (histograms, model calls, fidelity): a counter
  that starts at zero with the process, as Prometheus expects; `rate()` is the same on every
  replica.

Model calls: a step's successful call is its materialization (the `seconds` and `backend` the
asset records); a failed one is the step's failure or retry (`STEP_FAILURE`, `STEP_UP_FOR_RETRY`)
naming the service the step calls (`generations`: Gemini when the error names it, else Flux).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from jewel_dagster.contract import (
    CHECK_NAME,
    FULL_JOB,
    GENERATE_JOB,
    GPU_POOL,
    PREPROCESS_JOB,
    REGENERATE_JOB,
    SERVICE_NAMES_IN_ERRORS,
    STEP_SERVICES,
    AssetName,
)

log = logging.getLogger("gateway.metrics")

JOBS = (FULL_JOB, PREPROCESS_JOB, GENERATE_JOB, REGENERATE_JOB)
SERVICES = ("image_manipulator", "birefnet", "sam3", "a100", "flux", "gemini")
# The asset each successful call materializes, and its service.
ASSET_SERVICES: dict[str, str] = {
    AssetName.RESIZED_IMAGE: "image_manipulator",
    AssetName.ZOOM_CHECK: "image_manipulator",
    AssetName.BACKGROUND_REMOVED_IMAGE: "birefnet",
    AssetName.JEWELRY_MASK: "sam3",
    AssetName.REFINED_MASK: "a100",
    AssetName.FLUX_GENERATION: "flux",
    AssetName.GEMINI_GENERATION: "gemini",
    AssetName.FLUX_METRICS: "sam3",
}
# Dagster's end status -> the API's word for it.
ENDINGS = {"SUCCESS": "completed", "FAILURE": "failed", "CANCELED": "cancelled"}
# Start (the API call) to the end of the run; queue wait (start to RUN_START); model calls.
WORKFLOW_BUCKETS = (1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
QUEUE_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0, 120.0)
_PAGE = 500
_MAX_PAGES = 20  # per event type and refresh; the rest waits for the next refresh


class _Histogram:
    """Cumulative buckets per label tuple, as a HistogramMetricFamily wants them."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def touch(self, labels: tuple[str, ...]) -> None:
        self.series.setdefault(labels, ([0] * (len(self.bounds) + 1), [0.0]))

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        self.touch(labels)
        counts, total = self.series[labels]
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))
        counts[index] += 1
        total[0] += value

    def family(self, name: str, doc: str, label_names: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=label_names)
        for labels, (counts, total) in sorted(self.series.items()):
            running, buckets = 0, []
            for bound, count in zip((*map(str, self.bounds), "+Inf"), counts, strict=True):
                running += count
                buckets.append((bound, running))
            family.add_metric(list(labels), buckets, total[0])
        return family


@dataclass
class _Snapshot:
    """The figures of the last refresh (totals and gauges), replaced whole."""

    started: dict[str, int] = field(default_factory=dict)
    finished: dict[tuple[str, str], int] = field(default_factory=dict)
    queued: int = 0
    in_progress: int = 0
    pool: tuple[int, int, int] | None = None  # limit, claimed, pending


class DagsterFigures(Collector):
    """A prometheus_client collector over Dagster's storage, refreshed at most every `ttl` s."""

    def __init__(self, ttl: float, instance_factory: Callable[[], Any] | None = None) -> None:
        self._ttl = ttl
        self._factory = instance_factory or _default_instance
        self._instance: Any = None
        self._lock = threading.Lock()
        self._refreshed_at: float | None = None
        self._up = False
        self._snapshot = _Snapshot()
        self._cursors: dict[str, int] = {}  # event type -> storage id last read
        self._durations = _Histogram(WORKFLOW_BUCKETS)
        self._queue_wait = _Histogram(QUEUE_BUCKETS)
        self._call_seconds = _Histogram(CALL_BUCKETS)
        self._calls: dict[tuple[str, str], int] = defaultdict(int)
        self._checks: dict[str, int] = {"passed": 0, "failed": 0}
        for job in JOBS:
            self._queue_wait.touch((job,))
            for ending in ENDINGS.values():
                self._durations.touch((job, ending))
        for service in SERVICES:
            self._call_seconds.touch((service,))
            for outcome in ("ok", "error"):
                self._calls[(service, outcome)] = 0

    def use_instance(self, instance: Any) -> None:
        """Read this instance (tests) instead of the one DAGSTER_HOME names."""
        with self._lock:
            self._instance, self._refreshed_at, self._cursors = instance, None, {}

    def close(self) -> None:
        with self._lock:
            if self._instance is not None and self._factory is _default_instance:
                self._instance.dispose()
            self._instance = None

    # ------------------------------------------------------------------ prometheus_client

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on what the storage answers; none is fixed up front

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if self._refreshed_at is None or time.monotonic() - self._refreshed_at >= self._ttl:
                self._refresh()
            return list(self._families())

    # ------------------------------------------------------------------ reading

    def _refresh(self) -> None:
        first = self._refreshed_at is None
        self._refreshed_at = time.monotonic()
        try:
            if self._instance is None:
                self._instance = self._factory()
            self._snapshot = self._read_totals(self._instance)
            self._read_status_changes(self._instance)
            self._up = True
        except Exception as exc:  # the storage is down or not configured: say so, keep serving the rest
            if self._up or first:  # once per outage, not once per scrape
                log.warning("metrics: Dagster's storage did not answer: %s: %s", type(exc).__name__, exc)
            self._up = False

    def _read_totals(self, instance: Any) -> _Snapshot:
        from dagster import DagsterRunStatus, RunsFilter

        snapshot = _Snapshot()
        for job in JOBS:
            snapshot.started[job] = instance.get_runs_count(RunsFilter(job_name=job))
            for status, ending in ENDINGS.items():
                filters = RunsFilter(job_name=job, statuses=[DagsterRunStatus[status]])
                snapshot.finished[(job, ending)] = instance.get_runs_count(filters)
        snapshot.queued = instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
        going = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
        snapshot.in_progress = instance.get_runs_count(RunsFilter(statuses=going))
        info = instance.event_log_storage.get_concurrency_info(GPU_POOL)
        limit = info.limit if info.limit is not None else info.slot_count
        snapshot.pool = (int(limit or 0), len(info.claimed_slots), len(info.pending_steps))
        return snapshot

    def _read_status_changes(self, instance: Any) -> None:
        from dagster import DagsterEventType

        for event_type in ("RUN_START", "RUN_SUCCESS", "RUN_FAILURE", "RUN_CANCELED"):
            kind = DagsterEventType[event_type]
            if event_type not in self._cursors:  # first look: start from now, count what ends from here on
                newest = instance.fetch_run_status_changes(kind, limit=1, ascending=False).records
                self._cursors[event_type] = newest[0].storage_id if newest else 0
                continue
            for _ in range(_MAX_PAGES):
                records = self._changes_after(instance, kind, self._cursors[event_type])
                if records:
                    self._cursors[event_type] = records[-1].storage_id
                    self._count(instance, event_type, records)
                if len(records) < _PAGE:
                    break

    @staticmethod
    def _changes_after(instance: Any, kind: Any, cursor: int) -> list[Any]:
        from dagster import RunStatusChangeRecordsFilter

        records_filter = RunStatusChangeRecordsFilter(event_type=kind, after_storage_id=cursor)
        return list(instance.fetch_run_status_changes(records_filter, limit=_PAGE, ascending=True).records)

    def _count(self, instance: Any, event_type: str, records: list[Any]) -> None:
        from dagster import RunsFilter

        run_ids = list({r.event_log_entry.run_id for r in records})
        runs = {r.dagster_run.run_id: r for r in instance.get_run_records(RunsFilter(run_ids=run_ids))}
        for record in records:
            run = runs.get(record.event_log_entry.run_id)
            if run is None:
                continue  # deleted meanwhile
            job = run.dagster_run.job_name
            seconds = max(0.0, record.event_log_entry.timestamp - run.create_timestamp.timestamp())
            if event_type == "RUN_START":
                self._queue_wait.observe((job,), seconds)
                continue
            self._durations.observe((job, ENDINGS[event_type.removeprefix("RUN_")]), seconds)
            # A cancel interrupts the running step: its failure is the cancel, not the service's.
            self._count_run_events(instance, run.dagster_run.run_id, failures=event_type != "RUN_CANCELED")

    def _count_run_events(self, instance: Any, run_id: str, failures: bool) -> None:
        """The model calls and fidelity checks of one ended run, from its own events (one query)."""
        from dagster import DagsterEventType

        kinds = {
            DagsterEventType.ASSET_MATERIALIZATION,
            DagsterEventType.STEP_FAILURE,
            DagsterEventType.STEP_UP_FOR_RETRY,
            DagsterEventType.ASSET_CHECK_EVALUATION,
        }
        for record in instance.get_records_for_run(run_id, of_type=kinds).records:
            event = record.event_log_entry.dagster_event
            if event is None:
                continue
            if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                self._count_materialization(event.event_specific_data.materialization)
            elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
                evaluation = event.event_specific_data
                if evaluation.check_name == CHECK_NAME:
                    self._checks["passed" if evaluation.passed else "failed"] += 1
                    if "reason" in evaluation.metadata:  # not measured: SAM3 failed after the retries
                        self._calls[(ASSET_SERVICES[AssetName.FLUX_METRICS], "error")] += 1
            elif failures:
                self._count_step_failure(event)

    def _count_materialization(self, materialization: Any) -> None:
        service = ASSET_SERVICES.get(materialization.asset_key.path[-1])
        metadata = materialization.metadata
        backend = getattr(metadata.get("backend"), "value", None)
        if service is None or not backend or backend == "supplied":
            return  # not a service call (a supplied mask, a kept background, no Gemini)
        self._calls[(service, "ok")] += 1
        seconds = getattr(metadata.get("seconds"), "value", None)
        if isinstance(seconds, int | float):
            self._call_seconds.observe((service,), float(seconds))

    def _count_step_failure(self, event: Any) -> None:
        """A model call's error for the service of the step the failure's message names; none
        for a failure that names none (the request refused, e.g. a mask left empty)."""
        error = getattr(event.event_specific_data, "error", None)
        text = f"{getattr(error, 'message', '')} {getattr(getattr(error, 'cause', None), 'message', '')}"
        named = (
            service
            for service in STEP_SERVICES.get(event.step_key or "", ())
            if any(name in text for name in SERVICE_NAMES_IN_ERRORS[service])
        )
        service = next(named, None)
        if service is not None:
            self._calls[(service, "error")] += 1

    # ------------------------------------------------------------------ rendering

    def _families(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "jewel_dagster_storage_up", "1 when the last read of Dagster's storage answered.", value=float(self._up)
        )
        if self._refreshed_at is None or not self._snapshot.started:
            return
        snapshot = self._snapshot
        started = CounterMetricFamily(
            "jewel_workflows_started", "Runs ever created, by Dagster job (storage total).", labels=["dagster_job"]
        )
        for job, count in snapshot.started.items():
            started.add_metric([job], count)
        yield started
        finished = CounterMetricFamily(
            "jewel_workflows_finished",
            "Runs ended, by Dagster job and status: completed, failed, cancelled (storage total).",
            labels=["dagster_job", "status"],
        )
        for (job, ending), count in snapshot.finished.items():
            finished.add_metric([job, ending], count)
        yield finished
        yield GaugeMetricFamily("jewel_runs_queued", "Runs waiting in Dagster's run queue.", value=snapshot.queued)
        yield GaugeMetricFamily(
            "jewel_runs_in_progress", "Runs starting, running or being cancelled.", value=snapshot.in_progress
        )
        if snapshot.pool is not None:
            limit, claimed, pending = snapshot.pool
            for name, doc, value in (
                ("jewel_pool_slots", "Slots of the pool (its limit).", limit),
                ("jewel_pool_slots_claimed", "Slots of the pool held by running steps.", claimed),
                ("jewel_pool_steps_pending", "Steps waiting for a slot of the pool.", pending),
            ):
                gauge = GaugeMetricFamily(name, doc, labels=["pool"])
                gauge.add_metric([GPU_POOL], value)
                yield gauge
        yield self._durations.family(
            "jewel_workflow_duration_seconds",
            "Time from the start call (run created) to the run's end, by job and status.",
            ["dagster_job", "status"],
        )
        yield self._queue_wait.family(
            "jewel_run_queue_wait_seconds", "Time from the start call to the run's start, by job.", ["dagster_job"]
        )
        calls = CounterMetricFamily(
            "jewel_model_calls",
            "Model-service calls by service and outcome (ok, error).",
            labels=["service", "outcome"],
        )
        for (service, outcome), count in sorted(self._calls.items()):
            calls.add_metric([service, outcome], count)
        yield calls
        yield self._call_seconds.family(
            "jewel_model_call_duration_seconds", "Latency of successful model-service calls.", ["service"]
        )
        checks = CounterMetricFamily(
            "jewel_fidelity_checks", "Fidelity checks of Flux images, by result (passed, failed).", labels=["result"]
        )
        for result, count in self._checks.items():
            checks.add_metric([result], count)
        yield checks


def _default_instance() -> Any:
    from dagster import DagsterInstance  # deferred: only a scrape needs Dagster's storage

    return DagsterInstance.get()
