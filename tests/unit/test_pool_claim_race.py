"""A pool slot is granted to one step only, even when several processes claim it at the same instant.

Each trial is a fresh pool of one slot. PROCESSES worker processes (tests/support/simultaneous.py)
wait on a barrier, then all call `claim_concurrency_slot` on that pool;
the test counts how many were told CLAIMED. Dagster 1.13.27's own storages grant the slot twice in
a good share of the trials (see jewel_dagster/runtime/instance_plugins/pool_claims.py); ours must grant it exactly
once. The canary tests assert that the stock storages do race here, so a harness that stopped
reproducing the race (too slow, too serial) fails instead of passing silently.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from dagster_postgres.event_log import PostgresEventLogStorage

from jewel_dagster.runtime.instance_plugins.pool_claims import (
    QuickClaimPostgresEventLogStorage,
    QuickClaimSqliteEventLogStorage,
    SqliteEventLogStorage,
)
from tests.support.infra import postgres_database
from tests.support.simultaneous import at_the_same_instant

PROCESSES = 4
TRIALS = 30
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


def _storage(target: Target, _worker: int) -> SqliteEventLogStorage | PostgresEventLogStorage:
    return target.storage()


def _claim(storage: SqliteEventLogStorage | PostgresEventLogStorage, key: str, worker: int) -> bool:
    return storage.claim_concurrency_slot(key, f"run-{worker}", STEP).is_claimed


def claims_per_trial(target: Target, trials: int = TRIALS, processes: int = PROCESSES) -> list[int]:
    """How many processes were granted the single slot, trial by trial."""
    run = uuid.uuid4().hex[:8]  # fresh pools, also when tests share a database
    keys = [f"gpu-{run}-{trial}" for trial in range(trials)]
    setup = target.storage()
    for key in keys:
        setup.set_concurrency_slots(key, 1)
    setup.dispose()

    outcomes = at_the_same_instant(partial(_storage, target), _claim, keys, processes, preload=__name__)
    assert [o.error for o in outcomes if o.error] == []
    granted: Counter[str] = Counter()
    for outcome in outcomes:
        granted[outcome.key] += bool(outcome.result)
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
