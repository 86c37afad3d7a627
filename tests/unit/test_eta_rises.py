"""benchmarks.eta's count of `queuePosition` rises, on fixed polls: told apart by step."""

from __future__ import annotations

from benchmarks.eta import Poll, Rises, position_rises


def polls(*seen: tuple[int, int | None]) -> list[Poll]:
    return [Poll(float(n), "RUNNING", progress, position, None) for n, (progress, position) in enumerate(seen)]


def test_a_rise_at_the_same_step_counts_even_across_a_null_poll() -> None:
    assert position_rises(polls((55, 0), (55, 1))) == Rises(same_step=1)
    assert position_rises(polls((55, 0), (55, None), (55, 1))) == Rises(same_step=1, same_step_after_null=1)


def test_the_next_steps_wait_is_told_apart_without_a_null_poll_between() -> None:
    """A short pooled step ran between two polls: 0 at the mask, 1 at the images is the next
    wait, not a rise within one (the count before this change called it one)."""
    assert position_rises(polls((45, 0), (70, 1), (70, 0))) == Rises(pool_to_pool=1)
    assert position_rises(polls((5, 0), (30, 1), (30, 0))) == Rises(queue_to_pool=1)
    assert position_rises(polls((5, 3), (5, 2), (30, 1), (30, None), (70, 0))) == Rises()


def test_the_run_queue_and_the_pool_are_told_apart_by_the_runs_start() -> None:
    """At the first step's progress the run queue's last position and the pool's first are two
    waits: told apart by RUN_START, not by progress (a queue's 0 then the pool's 1 is no rise)."""
    waits = [Poll(float(at), "RUNNING", 5, position, 9) for at, position in ((1, 1), (2, 0), (4, 1), (5, 0))]
    assert position_rises(waits, started=3.0) == Rises(queue_to_pool=1)
    assert position_rises(waits) == Rises(same_step=1)  # by progress alone: one wait
    assert position_rises(waits + [Poll(6.0, "RUNNING", 5, 1, 9)], started=3.0) == Rises(same_step=1, queue_to_pool=1)

