"""A pool slot is granted to one step only, even when several processes claim it at the same instant.

Each trial is a fresh pool of one slot. PROCESSES worker processes (forked from a forkserver that
has imported Dagster once) wait on a barrier, then all call `claim_concurrency_slot` on that pool;
the test counts how many were told CLAIMED. Dagster 1.13.27's own storages grant the slot twice in
a good share of the trials (see jewel_dagster/runtime/pool_claims.py); ours must grant it exactly
once. The canary tests assert that the stock storages do race here, so a harness that stopped
reproducing the race (too slow, too serial) fails instead of passing silently.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster_postgres.event_log import PostgresEventLogStorage

from jewel_dagster.runtime.pool_claims import (
    QuickClaimPostgresEventLogStorage,
    QuickClaimSqliteEventLogStorage,
    SqliteEventLogStorage,
)
from tests.support.infra import postgres_database

PROCESSES = 4
TRIALS = 30
DEADLINE_SECONDS = 60.0  # the whole run of trials; a healthy one takes a few seconds
STEP = "generations"

_STORAGES = {
    ("sqlite", "ours"): QuickClaimSqliteEventLogStorage,
    ("sqlite", "stock"): SqliteEventLogStorage,
    ("postgres", "ours"): QuickClaimPostgresEventLogStorage,
    ("postgres", "stock"): PostgresEventLogStorage,
}


@dataclass(frozen=True)
class Target:
    backend: str  # "sqlite" or "postgres"
    kind: str  # "ours" or "stock"
    location: str  # SQLite base directory or PostgreSQL URL

    def storage(self) -> SqliteEventLogStorage | PostgresEventLogStorage:
        return _STORAGES[(self.backend, self.kind)](self.location)


def _claimer(target: Target, worker: int, keys: list[str], barrier: threading.Barrier, results: queue.Queue) -> None:
    """Worker process: claim each pool once, at the barrier, and report what the storage answered."""
    storage = target.storage()
    for key in keys:
        try:
            barrier.wait(timeout=DEADLINE_SECONDS)
        except threading.BrokenBarrierError:
            return
        try:
            claimed = storage.claim_concurrency_slot(key, f"run-{worker}", STEP).is_claimed
            results.put((key, worker, claimed, None))
        except Exception as exc:  # reported to the test, which fails with it
            results.put((key, worker, False, repr(exc)))


def claims_per_trial(target: Target, trials: int = TRIALS, processes: int = PROCESSES) -> list[int]:
    """How many processes were granted the single slot, trial by trial."""
    run = uuid.uuid4().hex[:8]  # fresh pools, also when tests share a database
    keys = [f"gpu-{run}-{trial}" for trial in range(trials)]
    setup = target.storage()
    for key in keys:
        setup.set_concurrency_slots(key, 1)
    setup.dispose()

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(target=_claimer, args=(target, worker, keys, barrier, results), daemon=True)
        for worker in range(processes)
    ]
    for process in workers:
        process.start()
    deadline = time.monotonic() + DEADLINE_SECONDS
    granted: Counter[str] = Counter()
    errors = []
    try:
        for _ in range(trials * processes):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"claims did not finish within {DEADLINE_SECONDS} s")
            key, _worker, claimed, error = results.get(timeout=remaining)
            granted[key] += claimed
            if error:
                errors.append(error)
    finally:
        barrier.abort()
        for process in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    assert errors == []
    return [granted[key] for key in keys]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        # SQLAlchemy 2.1 maps a plain postgresql:// to psycopg 3; dagster-postgres ships psycopg2.
        yield url.replace("postgresql://", "postgresql+psycopg2://", 1)


@pytest.fixture(params=["sqlite", "postgres"])
def backend_location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return "sqlite", str(tmp_path)
    return "postgres", request.getfixturevalue("postgres_url")


def test_one_slot_claimed_at_once_by_several_processes_is_granted_once(backend_location: tuple[str, str]) -> None:
    backend, location = backend_location
    grants = claims_per_trial(Target(backend, "ours", location))
    assert grants == [1] * TRIALS, f"{sum(g > 1 for g in grants)}/{TRIALS} trials granted the slot twice"


def test_canary_dagsters_stock_storage_grants_it_twice(backend_location: tuple[str, str]) -> None:
    """The harness reproduces the race: without our override some trial grants the one slot twice."""
    backend, location = backend_location
    # Measured: 5-8 of 30 trials on PostgreSQL, 16-25 of 30 on SQLite. One batch nearly always
    # shows it; a batch without one (about 1 in 300 on PostgreSQL) earns another, up to three.
    for _batch in range(3):
        if max(claims_per_trial(Target(backend, "stock", location))) > 1:
            return
    pytest.fail(f"stock storage never double-claimed in {3 * TRIALS} trials: the race was not reproduced")
