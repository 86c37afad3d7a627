"""Run one action in several processes at the same instant, trial after trial: the harness of the
race tests (two claims of one pool slot, two first claims of one pool).

Each worker process is forked from a forkserver that imported the caller's module once, builds its
own state with `setup(worker)` (a storage, an instance), then for every key waits on a barrier
with the others and calls `action(state, key, worker)`. What each call returned, or the exception
it raised, comes back to the caller.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEADLINE_SECONDS = 60.0  # the whole run of trials; a healthy one takes a few seconds


@dataclass(frozen=True)
class Outcome:
    key: str
    worker: int
    result: Any
    error: str | None


def _worker(
    setup: Callable[[int], Any],
    action: Callable[[Any, str, int], Any],
    worker: int,
    keys: list[str],
    barrier: threading.Barrier,
    results: queue.Queue[Outcome],
) -> None:
    try:
        state = setup(worker)
    except Exception as exc:  # every trial of this worker reports it
        for key in keys:
            results.put(Outcome(key, worker, None, f"setup: {exc!r}"))
        barrier.abort()
        return
    for key in keys:
        try:
            barrier.wait(timeout=DEADLINE_SECONDS)
        except threading.BrokenBarrierError:
            return
        try:
            results.put(Outcome(key, worker, action(state, key, worker), None))
        except Exception as exc:  # reported to the test, which decides
            results.put(Outcome(key, worker, None, repr(exc)))


def at_the_same_instant(
    setup: Callable[[int], Any],
    action: Callable[[Any, str, int], Any],
    keys: list[str],
    processes: int,
    preload: str,
) -> list[Outcome]:
    """Every outcome, `len(keys) * processes` of them; `preload` is the module the forkserver
    imports first (the test's own, so its functions resolve and Dagster is imported once)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([preload])
    barrier = context.Barrier(processes)
    results: queue.Queue[Outcome] = context.Queue()
    workers = [
        context.Process(target=_worker, args=(setup, action, worker, keys, barrier, results), daemon=True)
        for worker in range(processes)
    ]
    for process in workers:
        process.start()
    deadline = time.monotonic() + DEADLINE_SECONDS
    outcomes: list[Outcome] = []
    try:
        for _ in range(len(keys) * processes):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the trials did not finish within {DEADLINE_SECONDS} s")
            outcomes.append(results.get(timeout=remaining))
    finally:
        barrier.abort()
        for process in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    return outcomes
