"""The queue snapshot behind `queuePosition` and `etaSeconds`: one background refresh a second
per gateway process, so that GET and the event streams only look a run id up in a dict.

Each refresh reads, through Dagster's instance API on the storage under DAGSTER_HOME (as
`storage_reader` and /metrics do): the ids of the queued runs (one query), the other runs not
ended yet (one query), the new step and run events of the runs in flight (one incremental read
each: a handful, as the run queue admits few at once), and the `gpu` pool's line (one query). A
queued run's record is read once, when its id is first seen, and kept while it stays queued: it
changes nothing but its status meanwhile, and reading every record of a burst's queue each second
(a stored run deserialized each, ~0.3 ms) was most of a refresh's CPU with 30 queued runs
(py-spy, benchmarks.burst). A run known not ended that neither query lists (it changed status
between them) is read by its id. Finished steps and runs feed the rolling
medians; `gateway.eta` turns it all into positions and end times. Asking this per GET would
cost every poll those reads; a snapshot a second old is what a person watching needs.

Where the storage cannot be read (a deployment whose gateway has no DAGSTER_HOME), the fields
are simply absent: they are optional in the API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.eta import (
    LAUNCH,
    QUEUED,
    TAIL,
    ActiveRun,
    Estimate,
    PendingStep,
    RollingMedians,
    StepTimes,
    estimate,
    in_flight,
    last_step_end,
    step_samples,
)
from jewel_dagster.contract import GENERATE_OP, GPU_POOL, JOB_OPS, SEGMENT_OP

log = logging.getLogger("gateway.queue_estimates")

ACTIVE_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
GOING_STATUSES = tuple(s for s in ACTIVE_STATUSES if s != QUEUED)  # read whole at every refresh
MAX_ACTIVE = 10_000  # runs read a refresh: far beyond any queue this deployment keeps
SEED_RUNS = 10  # finished runs read once at start, so the first estimates need no warm-up
PRIORITY_TAG = "dagster/priority"
# Steps that claim the `gpu` pool (defs/assets.py); any other is learned from the steps seen in
# the line.
POOLED_OPS = frozenset({SEGMENT_OP, GENERATE_OP})
_EVENTS = (
    "RUN_DEQUEUED",
    "RUN_STARTING",
    "RUN_START",
    "RUN_SUCCESS",
    "STEP_START",
    "STEP_UP_FOR_RETRY",
    "STEP_RESTARTED",
    "STEP_SUCCESS",
    "STEP_SKIPPED",
    "STEP_FAILURE",
)


@dataclass
class _Timeline:
    """One run's events so far, folded; `sampled` names the steps already given to the medians."""

    cursor: str | None = None
    dequeued: float | None = None
    started: float | None = None
    ended: float | None = None
    steps: dict[str, StepTimes] = field(default_factory=dict)
    sampled: set[str] = field(default_factory=set)
    tail_sampled: bool = False

    def fold(self, kind: str, step_key: str | None, at: float) -> None:
        if kind in ("RUN_DEQUEUED", "RUN_STARTING"):
            self.dequeued = self.dequeued if self.dequeued is not None else at
        elif kind == "RUN_START":
            self.started = at
        elif kind == "RUN_SUCCESS":
            self.ended = at
        elif step_key is not None:
            known = self.steps.get(step_key, StepTimes())
            if kind == "STEP_START":
                self.steps[step_key] = StepTimes(start=at)
            elif kind in ("STEP_UP_FOR_RETRY", "STEP_RESTARTED"):
                self.steps[step_key] = replace(known, end=None)
            elif kind in ("STEP_SUCCESS", "STEP_SKIPPED"):
                self.steps[step_key] = replace(known, end=at)
            elif kind == "STEP_FAILURE":
                self.steps[step_key] = replace(known, failed=True)


class QueueEstimates:
    """Refreshes the snapshot every `interval` s in a daemon thread; `lookup` is a dict read."""

    def __init__(self, interval: float, instance_factory: Callable[[], Any] | None = None) -> None:
        self._interval = interval
        self._factory = instance_factory or _default_instance
        self._instance: Any = None
        self.medians = RollingMedians()
        self._timelines: dict[str, _Timeline] = {}
        self._queued_records: dict[str, Any] = {}  # run id -> its RunRecord, read once while it is queued
        self._active: set[str] = set()  # the run ids of the last refresh's runs not ended
        self._estimates: dict[str, Estimate] = {}
        self._slots = 0
        self._pooled_ops = POOLED_OPS
        self._seeded = False
        self._up = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def lookup(self, run_id: str) -> Estimate | None:
        """The run's position and end time as of the last refresh: one dict read."""
        return self._estimates.get(run_id)

    def start(self) -> None:
        if self._interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="queue-estimates", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._instance is not None and self._factory is _default_instance:
            self._instance.dispose()
        self._instance = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            delay = self._interval
            try:
                self.refresh()
                if not self._up:
                    log.info("queue estimates: Dagster's storage answers again")
                self._up = True
            except Exception as exc:  # the storage is down or not configured: no estimates, say it once
                if self._up:
                    log.warning("queue estimates: Dagster's storage did not answer: %s: %s", type(exc).__name__, exc)
                self._up = False
                self._estimates = {}
                delay = max(self._interval, 10.0)
            self._stop.wait(delay)

    # ------------------------------------------------------------------ one refresh

    def refresh(self, now: float | None = None) -> None:
        """Read the storage once and replace the snapshot (the loop calls it; tests call it)."""
        if self._instance is None:
            self._instance = self._factory()
        instance = self._instance
        if not self._seeded:
            self._seed(instance)
            self._seeded = True
        # The pool first, the runs after: a run seen with no step in the line and a pooled step
        # still to come (its events read later, so newer) will join it (gateway.eta.pool_line).
        pending, pool_slots = _pool_line(instance)
        self._pooled_ops = self._pooled_ops | {p.step_key for p in pending}
        records = self._active_records(instance)
        if not records and not self._timelines:  # nothing in flight, nothing that just ended
            self._estimates, self._slots, self._active = {}, 0, set()
            return
        runs: list[ActiveRun] = []
        active: set[str] = set()
        for record, status in records:
            run = record.dagster_run
            active.add(run.run_id)
            timeline = self._timelines.get(run.run_id) if status != QUEUED else None
            if status != QUEUED:
                timeline = timeline or self._timelines.setdefault(run.run_id, _Timeline())
                self._read_events(instance, run.run_id, timeline)
            runs.append(_active_run(run, status, record.create_timestamp.timestamp(), record.storage_id, timeline))
        for run_id in [r for r in self._timelines if r not in active]:  # ended since: its last events, once
            timeline = self._timelines.pop(run_id)
            self._read_events(instance, run_id, timeline)
        self._active = active
        holding = in_flight(runs)
        # While runs wait, the runs in flight are as many as the queue admits (its limit is in
        # dagster.yaml, which this gateway may not read); the most seen in this burst, then.
        self._slots = max(self._slots, holding) if holding < len(runs) else holding
        self._estimates = estimate(
            runs,
            pending,
            self.medians,
            self._slots,
            time.time() if now is None else now,
            pool_slots=pool_slots,
            pooled_ops=self._pooled_ops,
        )

    def _active_records(self, instance: Any) -> list[tuple[Any, str]]:
        """(RunRecord, status name) of every run not ended: the queued ones' records kept from when
        their ids were first seen (see the module's docstring), the others read whole."""
        from dagster import DagsterRunStatus, RunsFilter

        # Queued first: a run dequeued between the two reads is in both, and the second says so.
        queued = instance.get_run_ids(filters=RunsFilter(statuses=[DagsterRunStatus.QUEUED]), limit=MAX_ACTIVE)
        going = {
            record.dagster_run.run_id: (record, record.dagster_run.status.name)
            for record in instance.get_run_records(
                filters=RunsFilter(statuses=[DagsterRunStatus[s] for s in GOING_STATUSES]), limit=MAX_ACTIVE
            )
        }
        kept = {run_id: self._queued_records[run_id] for run_id in queued if run_id in self._queued_records}
        new = [run_id for run_id in queued if run_id not in kept and run_id not in going]
        # Queued after the first read, or seen last time and listed by neither (it changed status
        # between the two reads: queued meanwhile, or ended): read by id, as they are now.
        missing = [run_id for run_id in self._active if run_id not in going and run_id not in kept]
        looked = list(dict.fromkeys([*new, *missing]))
        if looked:
            for record in instance.get_run_records(filters=RunsFilter(run_ids=looked)):
                status = record.dagster_run.status.name
                if status == QUEUED:
                    kept[record.dagster_run.run_id] = record
                elif status in GOING_STATUSES:
                    going[record.dagster_run.run_id] = (record, status)
        self._queued_records = {run_id: record for run_id, record in kept.items() if run_id not in going}
        return [(record, QUEUED) for record in self._queued_records.values()] + list(going.values())

    def _read_events(self, instance: Any, run_id: str, timeline: _Timeline) -> None:
        from dagster import DagsterEventType

        found = instance.get_records_for_run(
            run_id, cursor=timeline.cursor, of_type={DagsterEventType[kind] for kind in _EVENTS}
        )
        for record in found.records:
            entry = record.event_log_entry
            if entry.dagster_event is not None:
                timeline.fold(entry.dagster_event.event_type.name, entry.dagster_event.step_key, entry.timestamp)
        timeline.cursor = found.cursor or timeline.cursor
        self._sample(run_id, timeline)

    def _sample(self, run_id: str, timeline: _Timeline) -> None:
        """Give the medians what this run finished since the last look."""
        job_ops = tuple(op for op in _ops_of_steps(timeline.steps))
        view = ActiveRun(run_id, job_ops, "STARTED", 0.0, started=timeline.started, steps=timeline.steps)
        fresh = [s for s in step_samples(view) if s[0] not in timeline.sampled]
        if fresh and timeline.started is not None and timeline.dequeued is not None and not timeline.sampled:
            self.medians.add(LAUNCH, timeline.started - timeline.dequeued)
        for op, key, seconds, _ in fresh:
            self.medians.add(key, seconds)
            timeline.sampled.add(op)
        last = last_step_end(view)
        if timeline.ended is not None and last is not None and not timeline.tail_sampled:
            self.medians.add(TAIL, timeline.ended - last)
            timeline.tail_sampled = True

    def _seed(self, instance: Any) -> None:
        """The medians of the last few successful runs: right after a restart, estimates at once."""
        from dagster import DagsterRunStatus, RunsFilter

        records = instance.get_run_records(filters=RunsFilter(statuses=[DagsterRunStatus.SUCCESS]), limit=SEED_RUNS)
        for record in reversed(records):  # oldest first: the newest stay in the window
            self._read_events(instance, record.dagster_run.run_id, _Timeline())


def _ops_of_steps(steps: dict[str, StepTimes]) -> list[str]:
    """The steps a run ran, in the order they started (samples need the one before each)."""
    return sorted((k for k, t in steps.items() if t.start is not None), key=lambda k: steps[k].start or 0.0)


def _active_run(run: Any, status: str, created: float, order: int, timeline: _Timeline | None) -> ActiveRun:
    try:
        priority = int(run.tags.get(PRIORITY_TAG, 0))
    except ValueError:
        priority = 0
    ops = tuple(JOB_OPS.get(run.job_name, ()))
    if timeline is None:
        return ActiveRun(run.run_id, ops, status, created, priority, order)
    return ActiveRun(
        run.run_id,
        ops,
        status,
        created,
        priority,
        order,
        dequeued=timeline.dequeued,
        started=timeline.started,
        steps=dict(timeline.steps),
    )


def _pool_line(instance: Any) -> tuple[list[PendingStep], int]:
    """The `gpu` pool's pending steps (holding a slot or waiting) and its number of slots."""
    info = instance.event_log_storage.get_concurrency_info(GPU_POOL)
    return [
        PendingStep(
            p.run_id,
            p.step_key,
            p.enqueued_timestamp.timestamp(),
            p.assigned_timestamp is not None,
            p.priority or 0,
        )
        for p in info.pending_steps
    ], info.slot_count


def _default_instance() -> Any:
    from dagster import DagsterInstance

    return DagsterInstance.get()
