"""Queue position and time left for runs in flight: pure arithmetic over a snapshot, no Dagster
and no HTTP, so every rule is tested with fixed numbers (tests/unit/test_eta.py).

The inputs are what one background read of Dagster's storage gives (gateway.dagster_api.queue_estimates):
the runs not ended yet (queued, starting, running) with their steps' start and end times, the
`gpu` pool's waiting steps, and rolling medians of what recent runs took. Per run id the output
is the queue position and when the run should end (unix seconds); GET only looks it up.

The model, step by step (each figure is the median of the last `WINDOW` samples):

- `launch`: from the run leaving Dagster's queue (RUN_DEQUEUED, else RUN_STARTING) to RUN_START.
- per Dagster step (op): `gap`, from the previous step's end (RUN_START for the first) to this
  step's STEP_START: the wait for a `gpu` pool slot and the executor's overhead, as the current
  load makes them; and `exec`, STEP_START to its end.
- `tail`: from the last step's end to the run's end.

A running run has left what its current step still needs (a step past its median is given a
tenth of it) plus the medians of the steps after it. Queued runs are placed in Dagster's order
(higher `dagster/priority` first, then older first) on the run slots: each takes the slot that
frees first, and runs for `launch` plus its job's medians. Positions only count what is ahead in
that order, so they never rise while a run waits unless a run of higher priority arrives.

The `gpu` pool's line is served by priority, then by when each step's request began (our storage
stamps a step with its run's start: jewel_dagster/runtime/instance_plugins/pool_claims.py), so a
request that began earlier is ahead even before its next pooled step claims (`pool_line`): a
waiting step's position does not rise when that step joins, nor while Dagster hands a freed slot
to the head of the line.
"""

from __future__ import annotations

import heapq
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

WINDOW = 30  # samples kept per median: a few bursts' worth, so the figures follow the load
OVERDUE_SHARE = 0.1  # a step past its median: this share of the median is still expected
QUEUED = "QUEUED"
# Waiting for a run slot: queued, or created and not submitted yet (a launch stores the run
# NOT_STARTED, then the coordinator queues it: a burst of starts holds many such runs at once,
# and counting them as runs in flight gave every queued run a free slot).
WAITING = frozenset({QUEUED, "NOT_STARTED"})
DEQUEUED = frozenset({"STARTING"})  # left the queue, RUN_START not written yet
RUNNING = "STARTED"
LAUNCH = "launch"
TAIL = "tail"


def gap_key(op: str) -> str:
    return f"gap:{op}"


def exec_key(op: str) -> str:
    return f"exec:{op}"


class RollingMedians:
    """The last `window` samples of each key and their median."""

    def __init__(self, window: int = WINDOW) -> None:
        self._window = window
        self._samples: dict[str, deque[float]] = {}

    def add(self, key: str, seconds: float) -> None:
        if seconds < 0:
            return  # clocks of two machines disagreeing: not a duration
        self._samples.setdefault(key, deque(maxlen=self._window)).append(seconds)

    def median(self, key: str) -> float | None:
        samples = self._samples.get(key)
        return statistics.median(samples) if samples else None

    def count(self, key: str) -> int:
        return len(self._samples.get(key, ()))


@dataclass(frozen=True)
class StepTimes:
    start: float | None = None  # STEP_START (the newest, after a retry)
    end: float | None = None  # STEP_SUCCESS or STEP_SKIPPED: the step is done
    failed: bool = False  # STEP_FAILURE: the run stops there


@dataclass(frozen=True)
class ActiveRun:
    """A run that has not ended, as far as the estimate needs it."""

    run_id: str
    ops: tuple[str, ...]  # the job's steps in execution order (empty: a job we do not know)
    status: str  # Dagster's run status name
    created: float  # unix seconds the run was stored (the queue's tie-break)
    priority: int = 0  # the `dagster/priority` tag
    order: int = 0  # the run storage's id: Dagster's queue takes equal priorities in this order
    dequeued: float | None = None
    started: float | None = None  # RUN_START
    steps: Mapping[str, StepTimes] = field(default_factory=dict)


@dataclass(frozen=True)
class PendingStep:
    """A step in a pool's line: waiting for a slot (assigned False) or holding one."""

    run_id: str
    step_key: str
    enqueued: float
    assigned: bool
    priority: int = 0


@dataclass(frozen=True)
class Estimate:
    position: int | None  # runs ahead in the run queue, or steps ahead in the pool; None: running
    ends_at: float | None  # unix seconds; None while a median it needs has no sample yet
    # `position` is the run queue's (the snapshot saw the run waiting there); not compared: the
    # same position and end either way.
    queued: bool = field(default=False, compare=False)
    # The step the snapshot saw waiting in the pool's line, and whether the snapshot's own read of
    # the run's events had that step started already (a retried step waiting again).
    waiting: tuple[str, bool] | None = field(default=None, compare=False)

    def position_for(self, run_status: str, step_starts: Mapping[str, float] | None = None) -> int | None:
        """The position to show for a run Dagster now reports in `run_status`, its steps started
        at `step_starts` (step key -> first start). The snapshot is up to a refresh old and the
        run's status is newer:

        - a run that left the run queue since (its status no longer QUEUED) shows no queue
          position until the next snapshot places it in the GPU pool's line, else a "0 ahead"
          from the queue turned "2 ahead" in the pool at the same step (benchmarks.eta counted it
          as a rise);
        - a step the snapshot saw waiting in the pool's line, never started, that the run's newer
          events have started got its slot: no position, only the time left, rather than
          "1 ahead" for the whole of a step shorter than a refresh. Judged by what each read saw,
          not by clocks (a step's start is stamped by the host that ran it). A retried step
          waiting again had started before: it keeps its place."""
        if self.queued and run_status not in WAITING:
            return None
        if self.waiting is not None and step_starts:
            step, had_started = self.waiting
            if not had_started and step in step_starts:
                return None
        return self.position


def step_samples(run: ActiveRun) -> list[tuple[str, str, float, float]]:
    """(op, which, seconds, when) of every step the run finished: `gap` and `exec` samples."""
    if run.started is None:
        return []
    out: list[tuple[str, str, float, float]] = []
    anchor = run.started
    for op in run.ops:
        times = run.steps.get(op)
        if times is None or times.end is None:
            break
        if times.start is not None:
            out.append((op, gap_key(op), times.start - anchor, times.end))
            out.append((op, exec_key(op), times.end - times.start, times.end))
        anchor = times.end
    return out


def last_step_end(run: ActiveRun) -> float | None:
    ends = [t.end for t in run.steps.values() if t.end is not None]
    return max(ends) if ends else None


def job_seconds(ops: Sequence[str], medians: RollingMedians) -> float | None:
    """A whole run from RUN_START to its end, from the medians; None if one is missing."""
    total = medians.median(TAIL)
    if total is None or not ops:
        return None
    for op in ops:
        gap, ex = medians.median(gap_key(op)), medians.median(exec_key(op))
        if gap is None or ex is None:
            return None
        total += gap + ex
    return total


def remaining_seconds(
    run: ActiveRun, medians: RollingMedians, now: float, slot_at: float | None = None
) -> float | None:
    """Seconds until a run that left the queue ends; None when unknown (a median missing, a
    failed step, a job of unknown steps). `slot_at`: when the step it waits for in a pool should
    get its slot (`pool_starts`), in place of the step's median wait."""
    if not run.ops:
        return None
    if run.started is None:  # dequeued, its worker starting
        whole, launch = job_seconds(run.ops, medians), medians.median(LAUNCH)
        if whole is None or launch is None:
            return None
        since = now - (run.dequeued if run.dequeued is not None else run.created)
        return max(launch - since, 0.0) + whole
    anchor, index = run.started, len(run.ops)  # the index of the first step not done
    for i, op in enumerate(run.ops):
        times = run.steps.get(op)
        if times is not None and times.failed:
            return None
        if times is None or times.end is None:
            index = i
            break
        anchor = times.end
    if index == len(run.ops):  # every step done: the run is writing its end
        tail = medians.median(TAIL)
        return None if tail is None else max(tail - (now - anchor), 0.0)
    op = run.ops[index]
    gap, ex = medians.median(gap_key(op)), medians.median(exec_key(op))
    rest = job_seconds(run.ops[index + 1 :], medians) if index + 1 < len(run.ops) else medians.median(TAIL)
    if gap is None or ex is None or rest is None:
        return None
    times = run.steps.get(op)
    if times is not None and times.start is not None:  # running its current step
        current = max(ex - (now - times.start), OVERDUE_SHARE * ex)
    elif slot_at is not None:  # in a pool's line: its turn, the executor's overhead, its run time
        overhead = min(g for g in (medians.median(gap_key(o)) for o in run.ops) if g is not None)
        current = max(slot_at - now, 0.0) + overhead + ex
    else:  # waiting for it (the executor, a pool slot it has not asked for yet)
        current = max(gap - (now - anchor), 0.0) + ex
    return current + rest


def queue_order(runs: Iterable[ActiveRun]) -> list[ActiveRun]:
    """Waiting runs in the order Dagster's queue takes them: priority, then age."""
    return sorted((r for r in runs if r.status in WAITING), key=lambda r: (-r.priority, r.order, r.created))


def in_flight(runs: Iterable[ActiveRun]) -> int:
    """Runs holding one of the run queue's slots (starting, running, cancelling)."""
    return sum(1 for r in runs if r.status not in WAITING)


def line_key(step: PendingStep) -> tuple[int, float, str, str]:
    """Dagster's order of a pool's line: priority, then `enqueued` (our storage stamps a step with
    its run's start, to the microsecond: pool_claims.py), then, for the ties no storage of ours
    makes, the pending steps index's order (run id, step key)."""
    return (-step.priority, step.enqueued, step.run_id, step.step_key)


@dataclass(frozen=True)
class PoolLine:
    """A pool's line as Dagster will serve it: the steps holding (or about to be given) a slot,
    and the waiting ones in order, with the runs that will join ahead of later requests."""

    holders: list[PendingStep]
    waiting: list[PendingStep]  # in line_key order; `joining` entries have not claimed yet
    joining: frozenset[str] = frozenset()  # run ids of the waiting entries that are not in the line yet


def next_pooled_op(run: ActiveRun, pooled_ops: frozenset[str]) -> str | None:
    """The run's first pooled step that has not started, if no step failed (a step started and
    not ended with no entry in the line has just ended: its success is being written)."""
    for op in run.ops:
        times = run.steps.get(op)
        if times is not None and times.failed:
            return None
        if times is None or times.start is None:
            if op in pooled_ops:
                return op
    return None


def pool_line(
    pending: Sequence[PendingStep],
    runs: Mapping[str, ActiveRun] | None = None,
    pooled_ops: frozenset[str] = frozenset(),
    slots: int | None = None,
) -> PoolLine:
    """The line from a snapshot of the pool's pending steps (and of the runs, read after it).

    - Free slots (`slots` more than the steps assigned) go to the head of the line at once
      (Dagster assigns when a holder frees its slot, a moment after removing its entry): a
      snapshot taken in between counts those heads as holders, not as steps ahead.
    - A request started before another is served first (pool_claims.py): a started run with no
      step in the pool that has a pooled step still to come will join the line at its run's
      start, ahead of every request begun later, so it counts ahead of them already. Without this,
      a request's position rose each time an earlier request's next step joined. Only when the
      storage stamps steps that way (every entry of a started run is stamped with its start).
    """
    runs = runs or {}
    line = sorted((p for p in pending if not p.assigned), key=line_key)
    holders = [p for p in pending if p.assigned]
    free = 0 if slots is None else max(slots - len(holders), 0)
    holders += line[:free]
    waiting = line[free:]
    stamped_by_run = all(
        abs(p.enqueued - started) < 1e-3
        for p in pending
        if (run := runs.get(p.run_id)) is not None and (started := run.started) is not None
    )
    joining: dict[str, PendingStep] = {}
    if stamped_by_run:
        in_pool = {p.run_id for p in pending}
        for run in runs.values():
            if run.status != RUNNING or run.started is None or run.run_id in in_pool:
                continue
            op = next_pooled_op(run, pooled_ops)
            if op is not None:
                joining[run.run_id] = PendingStep(run.run_id, op, round(run.started, 6), False, run.priority)
    ordered = sorted([*waiting, *joining.values()], key=line_key)
    return PoolLine(holders, ordered, frozenset(joining))


def pool_positions(pending: Iterable[PendingStep] | PoolLine) -> dict[str, int]:
    """run id -> steps ahead of its waiting step in the pool's line (Dagster assigns free slots
    by priority, then by when the step's request began). A step that holds its slot is not
    waiting; a run about to join counts ahead of those behind it but has no position itself."""
    line = pending if isinstance(pending, PoolLine) else pool_line(list(pending))
    positions: dict[str, int] = {}
    for ahead, step in enumerate(line.waiting):
        if step.run_id not in line.joining:
            positions.setdefault(step.run_id, ahead)
    return positions


def pool_starts(
    pending: Sequence[PendingStep] | PoolLine,
    runs: Mapping[str, ActiveRun],
    medians: RollingMedians,
    now: float,
) -> dict[str, float]:
    """run id -> when its waiting step should get a pool slot: the slots' holders free them after
    their step's median run time, and the waiting steps take them in the line's order."""
    line = pending if isinstance(pending, PoolLine) else pool_line(pending)
    free: list[float] = []
    for holder in line.holders:
        ex = medians.median(exec_key(holder.step_key))
        run = runs.get(holder.run_id)
        times = run.steps.get(holder.step_key) if run is not None else None
        if ex is None:
            free.append(now)
        elif times is None or times.start is None:  # assigned, its step about to start
            free.append(now + ex)
        else:
            free.append(max(times.start + ex, now + OVERDUE_SHARE * ex))
    if not free:
        free = [now]  # a line with no holder: a slot is about to be assigned
    heapq.heapify(free)
    starts: dict[str, float] = {}
    for step in line.waiting:
        at = heapq.heappop(free)
        if step.run_id not in line.joining:
            starts.setdefault(step.run_id, at)
        heapq.heappush(free, at + (medians.median(exec_key(step.step_key)) or 0.0))
    return starts


def estimate(
    runs: Sequence[ActiveRun],
    pending: Sequence[PendingStep],
    medians: RollingMedians,
    run_slots: int,
    now: float,
    pool_slots: int | None = None,
    pooled_ops: frozenset[str] = frozenset(),
) -> dict[str, Estimate]:
    """Position and end time of every run not ended yet.

    `run_slots` is how many runs Dagster admits at once (at least the runs in flight now);
    `pool_slots` the pool's slots and `pooled_ops` the steps that claim it (`pool_line`).
    """
    out: dict[str, Estimate] = {}
    by_id = {r.run_id: r for r in runs}
    line = pool_line(pending, by_id, pooled_ops, pool_slots)
    in_pool = pool_positions(line)
    waiting: dict[str, tuple[str, bool]] = {}
    for step in line.waiting:
        seen = by_id.get(step.run_id)
        times = seen.steps.get(step.step_key) if seen is not None else None
        waiting.setdefault(step.run_id, (step.step_key, times is not None and times.start is not None))
    slot_at = pool_starts(line, by_id, medians, now)
    free_at: list[float] = []
    for run in runs:
        if run.status in WAITING:
            continue
        going = run.status == RUNNING or run.status in DEQUEUED
        left = remaining_seconds(run, medians, now, slot_at.get(run.run_id)) if going else None
        ends_at = None if left is None else now + left
        place = in_pool.get(run.run_id)
        out[run.run_id] = Estimate(place, ends_at, waiting=waiting.get(run.run_id) if place is not None else None)
        # A run we cannot estimate (cancelling, failing) is taken to free its slot now.
        free_at.append(ends_at if ends_at is not None else now)
    free_at += [now] * max(run_slots - len(free_at), 0)
    if not free_at:
        free_at = [now]
    heapq.heapify(free_at)
    launch = medians.median(LAUNCH)
    known = True  # once one run ahead has no estimate, none behind it has one either
    for position, run in enumerate(queue_order(runs)):
        slot = heapq.heappop(free_at)
        whole = job_seconds(run.ops, medians)
        known = known and whole is not None and launch is not None
        ends_at = slot + launch + whole if known and whole is not None and launch is not None else None
        out[run.run_id] = Estimate(position, ends_at, queued=True)
        heapq.heappush(free_at, ends_at if ends_at is not None else slot)
    return out


def seconds_left(estimate: Estimate, now: float) -> int | None:
    """What GET says: whole seconds, at least 1 while the run has not ended."""
    if estimate.ends_at is None:
        return None
    return max(1, round(estimate.ends_at - now))
