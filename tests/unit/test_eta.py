"""Queue position and ETA arithmetic (gateway.eta) on fixed snapshots: no Dagster, no HTTP.

Medians: launch 2 s, per step gap 0.5 s and exec 1/2/1/3 s, tail 0.5 s: a whole run is
0.5 + (0.5+1) + (0.5+2) + (0.5+1) + (0.5+3) = 9.5 s after its launch's 2 s.
"""

from __future__ import annotations

import pytest

from gateway.eta import (
    LAUNCH,
    TAIL,
    ActiveRun,
    Estimate,
    PendingStep,
    RollingMedians,
    StepTimes,
    estimate,
    exec_key,
    gap_key,
    in_flight,
    job_seconds,
    pool_positions,
    pool_starts,
    queue_order,
    remaining_seconds,
    seconds_left,
    step_samples,
)
from jewel_dagster.contract import FULL_JOB, GENERATE_OP, JOB_OPS, PREPARE_OP, SEGMENT_OP

OPS = tuple(JOB_OPS[FULL_JOB])
EXEC = {PREPARE_OP: 1.0, SEGMENT_OP: 2.0, GENERATE_OP: 4.5}  # generate: the brush strokes and the images
NOW = 1_000.0


def medians() -> RollingMedians:
    m = RollingMedians()
    m.add(LAUNCH, 2.0)
    m.add(TAIL, 0.5)
    for op, seconds in EXEC.items():
        m.add(gap_key(op), 0.5)
        m.add(exec_key(op), seconds)
    return m


def running(run_id: str = "r", steps: dict[str, StepTimes] | None = None, started: float = NOW - 10) -> ActiveRun:
    return ActiveRun(run_id, OPS, "STARTED", created=NOW - 20, started=started, steps=steps or {})


def queued(run_id: str, created: float, priority: int = 0) -> ActiveRun:
    return ActiveRun(run_id, OPS, "QUEUED", created=created, priority=priority)


def test_rolling_median_keeps_the_last_window_only() -> None:
    m = RollingMedians(window=3)
    for seconds in (100.0, 1.0, 2.0, 3.0):
        m.add("k", seconds)
    assert m.median("k") == 2.0 and m.count("k") == 3
    assert m.median("other") is None
    m.add("k", -1.0)  # not a duration: ignored
    assert m.count("k") == 3


def test_a_whole_run_is_the_sum_of_its_medians() -> None:
    assert job_seconds(OPS, medians()) == pytest.approx(9.5)
    m = medians()
    assert job_seconds((*OPS, "unknown_step"), m) is None  # a step never seen: no guess


def test_remaining_while_a_step_runs() -> None:
    # prepare done at NOW-8, segment started at NOW-7.5 and runs 2 s: 1.5 s left of it, then
    # generate 5.0, tail 0.5.
    run = running(steps={PREPARE_OP: StepTimes(NOW - 9.5, NOW - 8), SEGMENT_OP: StepTimes(NOW - 7.5)})
    assert remaining_seconds(run, medians(), NOW - 6) == pytest.approx(0.5 + 5.0 + 0.5)


def test_a_step_past_its_median_still_has_a_tenth_left() -> None:
    run = running(steps={PREPARE_OP: StepTimes(NOW - 9.5, NOW - 8), SEGMENT_OP: StepTimes(NOW - 7.5)})
    assert remaining_seconds(run, medians(), NOW) == pytest.approx(0.2 + 5.0 + 0.5)


def test_remaining_while_a_step_waits_for_its_slot() -> None:
    # prepare ended 0.2 s ago; segment not started: 0.3 s of its median gap left, then 2 s.
    run = running(steps={PREPARE_OP: StepTimes(NOW - 1.2, NOW - 0.2)})
    assert remaining_seconds(run, medians(), NOW) == pytest.approx(0.3 + 2 + 5.0 + 0.5)


def test_remaining_before_run_start_and_after_the_last_step() -> None:
    starting = ActiveRun("r", OPS, "STARTING", created=NOW - 5, dequeued=NOW - 0.5)
    assert remaining_seconds(starting, medians(), NOW) == pytest.approx(1.5 + 9.5)
    done = {op: StepTimes(NOW - 9 + i, NOW - 8.5 + i) for i, op in enumerate(OPS)}
    assert remaining_seconds(running(steps=done), medians(), NOW - 6.3) == pytest.approx(0.3)


def test_no_estimate_for_a_failed_step_or_an_unknown_job() -> None:
    failed = running(steps={PREPARE_OP: StepTimes(NOW - 2, None, failed=True)})
    assert remaining_seconds(failed, medians(), NOW) is None
    assert remaining_seconds(ActiveRun("r", (), "STARTED", NOW, started=NOW), medians(), NOW) is None


def test_queue_order_is_priority_then_age() -> None:
    runs = [queued("late", NOW - 1), queued("early", NOW - 5), queued("urgent", NOW, priority=5)]
    assert [r.run_id for r in queue_order(runs)] == ["urgent", "early", "late"]


def test_queued_runs_take_the_slot_that_frees_first() -> None:
    # Two slots: one run ends in 4 s (started 5.5 s ago, generating), the other is starting.
    a = running(
        "a",
        steps={
            PREPARE_OP: StepTimes(NOW - 5, NOW - 4),
            SEGMENT_OP: StepTimes(NOW - 3.5, NOW - 2.5),
            GENERATE_OP: StepTimes(NOW - 2.0),
        },
        started=NOW - 5.5,
    )
    b = ActiveRun("b", OPS, "STARTING", created=NOW - 3, dequeued=NOW)
    q = [queued("q0", NOW - 2), queued("q1", NOW - 1), queued("q2", NOW - 0.5)]
    out = estimate([a, b, *q], [], medians(), run_slots=2, now=NOW)
    assert out["a"] == Estimate(None, pytest.approx(NOW + 3.0))  # 2.5 s of generate, 0.5 tail
    assert out["b"] == Estimate(None, pytest.approx(NOW + 11.5))
    # q0 takes a's slot at +3: +3 + 2 + 9.5; q1 takes b's at +11.5; q2 takes q0's at +14.5.
    assert out["q0"] == Estimate(0, pytest.approx(NOW + 14.5))
    assert out["q1"] == Estimate(1, pytest.approx(NOW + 23.0))
    assert out["q2"] == Estimate(2, pytest.approx(NOW + 26.0))


def test_runs_not_submitted_yet_wait_behind_and_hold_no_slot() -> None:
    # A burst of starts: runs stored NOT_STARTED, not queued yet. They must not count as runs in
    # flight (each queued run then had a free slot: every queued ETA was the same).
    a = running("a", steps={op: StepTimes(NOW - 9 + i, NOW - 8.5 + i) for i, op in enumerate(OPS[:2])})
    fresh = ActiveRun("fresh", OPS, "NOT_STARTED", created=NOW - 1)
    runs = [a, queued("q0", NOW - 2), fresh]
    assert in_flight(runs) == 1
    out = estimate(runs, [], medians(), run_slots=in_flight(runs), now=NOW)
    assert out["q0"].position == 0 and out["fresh"].position == 1
    assert out["a"].ends_at is not None and out["q0"].ends_at is not None and out["fresh"].ends_at is not None
    assert out["a"].ends_at < out["q0"].ends_at < out["fresh"].ends_at


def test_without_samples_positions_stay_and_times_are_unknown() -> None:
    out = estimate([running("a"), queued("q0", NOW), queued("q1", NOW + 1)], [], RollingMedians(), 1, NOW)
    assert out == {"a": Estimate(None, None), "q0": Estimate(0, None), "q1": Estimate(1, None)}


def test_pool_position_counts_the_waiting_steps_ahead_only() -> None:
    line = [
        PendingStep("holder", GENERATE_OP, NOW - 9, assigned=True),
        PendingStep("second", SEGMENT_OP, NOW - 2, assigned=False),
        PendingStep("first", GENERATE_OP, NOW - 3, assigned=False),
        PendingStep("bg", GENERATE_OP, NOW - 8, assigned=False, priority=-1),
    ]
    assert pool_positions(line) == {"first": 0, "second": 1, "bg": 2}
    run = running("second", steps={PREPARE_OP: StepTimes(NOW - 3, NOW - 2)})
    assert estimate([run], line, medians(), 4, NOW)["second"].position == 1


def test_positions_never_rise_as_the_queue_drains() -> None:
    m = medians()
    waiting = [queued(f"q{i}", NOW + i) for i in range(6)]
    seen: dict[str, list[int]] = {r.run_id: [] for r in waiting}
    for tick in range(6):  # each tick the head of the queue leaves it and a newer run joins
        runs = waiting[tick:] + [queued(f"late{tick}", NOW + 100 + tick)]
        for run_id, found in estimate(runs, [], m, 2, NOW + tick).items():
            if run_id in seen and found.position is not None:
                seen[run_id].append(found.position)
    assert all(p == sorted(p, reverse=True) for p in seen.values()), seen


def test_a_step_in_the_pools_line_waits_for_the_holders_and_the_steps_ahead() -> None:
    holder = running("holder", steps={GENERATE_OP: StepTimes(NOW - 2.5)})  # 4.5 s: frees the slot at +2
    first = running("first", steps={PREPARE_OP: StepTimes(NOW - 3, NOW - 2)})
    second = running("second", steps={PREPARE_OP: StepTimes(NOW - 3, NOW - 1)})
    line = [
        PendingStep("holder", GENERATE_OP, NOW - 5, assigned=True),
        PendingStep("second", SEGMENT_OP, NOW - 1, assigned=False),
        PendingStep("first", SEGMENT_OP, NOW - 2, assigned=False),
    ]
    runs = {r.run_id: r for r in (holder, first, second)}
    assert pool_starts(line, runs, medians(), NOW) == {"first": NOW + 2, "second": NOW + 4}
    # first: its slot at +2, the smallest step overhead 0.5, segment 2; then generate, tail.
    out = estimate(list(runs.values()), line, medians(), 4, NOW)
    assert out["first"] == Estimate(0, pytest.approx(NOW + 2 + 0.5 + 2 + 5.0 + 0.5))
    assert out["second"] == Estimate(1, pytest.approx(NOW + 4 + 0.5 + 2 + 5.0 + 0.5))


def test_a_step_that_started_after_the_snapshot_saw_it_waiting_shows_no_place_in_the_line() -> None:
    """The snapshot is up to a refresh old; a pooled step shorter than a refresh ran while GET
    and the page still said "1 ahead" (the page's test saw no running label, 1 run in 3 beside
    other work). A step the snapshot had not seen start, started since, has its slot: no place;
    one not started, or one the snapshot saw started (a retried step waiting again), keeps it."""
    holder = running("holder", steps={GENERATE_OP: StepTimes(NOW - 2.5)})
    first = running("first", steps={PREPARE_OP: StepTimes(NOW - 3, NOW - 2)})
    retried = running("retried", steps={PREPARE_OP: StepTimes(NOW - 9, NOW - 8), SEGMENT_OP: StepTimes(NOW - 7)})
    line = [
        PendingStep("holder", GENERATE_OP, NOW - 5, assigned=True),
        PendingStep("retried", SEGMENT_OP, NOW - 9, assigned=False),
        PendingStep("first", SEGMENT_OP, NOW - 2, assigned=False),
    ]
    out = estimate([holder, first, retried], line, medians(), 4, NOW)
    found = out["first"]
    assert found.waiting == (SEGMENT_OP, False)
    assert found.position_for("STARTED", {PREPARE_OP: NOW - 3}) == 1  # still waiting
    assert found.position_for("STARTED", {PREPARE_OP: NOW - 3, SEGMENT_OP: NOW + 0.1}) is None  # got its slot
    # Whatever the clocks say: a step stamped by a host whose clock is behind got its slot too.
    assert found.position_for("STARTED", {SEGMENT_OP: NOW - 60}) is None
    # A retry waiting again had started before the snapshot: it keeps its place.
    assert out["retried"].waiting == (SEGMENT_OP, True)
    assert out["retried"].position_for("STARTED", {PREPARE_OP: NOW - 9, SEGMENT_OP: NOW - 7}) == 0
    assert out["holder"].waiting is None and out["holder"].position_for("STARTED", {GENERATE_OP: NOW}) is None


def test_equal_priorities_leave_the_queue_in_storage_order() -> None:
    # SQLite stores a run's creation time to the second: a burst's runs tie, the storage id does not.
    runs = [ActiveRun(f"r{n}", OPS, "QUEUED", created=NOW, order=n) for n in (3, 1, 2)]
    assert [r.run_id for r in queue_order(runs)] == ["r1", "r2", "r3"]


def test_samples_follow_the_steps_in_order() -> None:
    run = running(steps={PREPARE_OP: StepTimes(NOW - 9, NOW - 8), SEGMENT_OP: StepTimes(NOW - 7)}, started=NOW - 10)
    assert step_samples(run) == [
        (PREPARE_OP, gap_key(PREPARE_OP), 1.0, NOW - 8),
        (PREPARE_OP, exec_key(PREPARE_OP), 1.0, NOW - 8),
    ]


def test_seconds_left_is_whole_and_at_least_one_while_running() -> None:
    assert seconds_left(Estimate(None, NOW + 4.4), NOW) == 4
    assert seconds_left(Estimate(None, NOW - 3), NOW) == 1
    assert seconds_left(Estimate(3, None), NOW) is None


def _positions(runs: list[ActiveRun], line: list[PendingStep], slots: int | None = 2) -> dict[str, int | None]:
    pooled = frozenset({SEGMENT_OP, GENERATE_OP})
    out = estimate(runs, line, medians(), 10, NOW, pool_slots=slots, pooled_ops=pooled)
    return {run_id: found.position for run_id, found in out.items()}


def test_a_request_begun_earlier_counts_ahead_before_its_next_step_joins_the_pool() -> None:
    """The pool serves requests in the order they began (pool_claims.py stamps each step with its
    run's start): A's generate joins ahead of D. Fails without `pool_line`'s joining runs (D went 1, 1,
    0, 1), without its freed heads (1, 2, 1, 1: A's entry removed, C not assigned yet), or both
    (as before this fix)."""
    begun = {"A": NOW - 30, "B": NOW - 25, "C": NOW - 20, "D": NOW - 15}
    prepared = {PREPARE_OP: StepTimes(NOW - 14, NOW - 13)}

    def run(run_id: str, steps: dict[str, StepTimes]) -> ActiveRun:
        return running(run_id, steps={**prepared, **steps}, started=begun[run_id])

    def entry(run_id: str, op: str, assigned: bool) -> PendingStep:
        return PendingStep(run_id, op, begun[run_id], assigned)

    b = run(
        "B",
        {
            SEGMENT_OP: StepTimes(NOW - 9, NOW - 8),
            GENERATE_OP: StepTimes(NOW - 1),
        },
    )
    c, d = run("C", {}), run("D", {})
    a_segmenting = run("A", {SEGMENT_OP: StepTimes(NOW - 1)})
    a_segmented = run("A", {SEGMENT_OP: StepTimes(NOW - 1, NOW)})
    holding_b = entry("B", GENERATE_OP, True)
    snapshots = [
        (
            [a_segmenting, b, c, d],
            [entry("A", SEGMENT_OP, True), holding_b, entry("C", SEGMENT_OP, False), entry("D", SEGMENT_OP, False)],
        ),
        # A's entry removed, its slot not given to C yet (Dagster assigns a moment later)
        ([a_segmented, b, c, d], [holding_b, entry("C", SEGMENT_OP, False), entry("D", SEGMENT_OP, False)]),
        ([a_segmented, b, c, d], [holding_b, entry("C", SEGMENT_OP, True), entry("D", SEGMENT_OP, False)]),
        (
            [a_segmented, b, c, d],
            [holding_b, entry("C", SEGMENT_OP, True), entry("A", GENERATE_OP, False), entry("D", SEGMENT_OP, False)],
        ),
    ]
    seen = [_positions(runs, line) for runs, line in snapshots]
    assert [s["D"] for s in seen] == [1, 1, 1, 1]
    assert [s["C"] for s in seen] == [0, None, None, None]
    assert [s["A"] for s in seen] == [None, None, None, 0]


def test_a_storage_stamping_each_claim_keeps_the_line_as_it_is() -> None:
    """Dagster's own storage (DAGSTER_STOCK_SETTINGS) stamps a step when it claims: a run with
    no entry then joins at the back, so it is not counted ahead."""
    a = running("A", steps={PREPARE_OP: StepTimes(NOW - 9, NOW - 8)}, started=NOW - 30)
    d = running("D", steps={PREPARE_OP: StepTimes(NOW - 9, NOW - 8)}, started=NOW - 15)
    line = [PendingStep("B", GENERATE_OP, NOW - 3, True), PendingStep("D", SEGMENT_OP, NOW - 2, False)]
    assert _positions([a, d], line, slots=1)["D"] == 0
