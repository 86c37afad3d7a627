"""A fresh pool's first claims, made by several runs at the same instant on PostgreSQL, all succeed.

The first claim of a pool with no limit row creates it from `concurrency.pools.default_limit`
(`initialize_concurrency_limit_to_default`). Dagster 1.13.27 inserts, and on IntegrityError updates
in the same transaction, which PostgreSQL has aborted: the losing run fails with
InFailedSqlTransaction (seen in tests/e2e/test_scaleout.py: a run failed at its first `gpu` step
and was retried, so its key had two runs). Each trial here is a fresh pool that PROCESSES instances
initialise at the same instant (tests/support/simultaneous.py). Ours: no error, and the pool ends
with the default's slots, not more. Canary: the stock storage fails in some trial.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import dagster as dg
import pytest
import yaml

from tests.support.infra import postgres_database
from tests.support.simultaneous import Outcome, at_the_same_instant

PROCESSES = 4
TRIALS = 8
DEFAULT_LIMIT = 2
_STORAGES = {
    "ours": ("jewel_dagster.runtime.instance_plugins.pool_claims", "QuickClaimPostgresEventLogStorage"),
    "stock": ("dagster_postgres.event_log", "PostgresEventLogStorage"),
}


def _home(root: Path, postgres_url: str, kind: str) -> str:
    module, class_name = _STORAGES[kind]
    home = root / kind
    home.mkdir()
    config = {
        "event_log_storage": {"module": module, "class": class_name, "config": {"postgres_url": postgres_url}},
        "concurrency": {"pools": {"default_limit": DEFAULT_LIMIT}},
        "telemetry": {"enabled": False},
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    # Once here, so the workers find the instance's SQLite run and schedule storages created.
    dg.DagsterInstance.from_config(str(home)).dispose()
    return str(home)


def _instance(home: str, _worker: int) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(home)


def _initialize(instance: dg.DagsterInstance, key: str, _worker: int) -> bool:
    return instance.event_log_storage.initialize_concurrency_limit_to_default(key)


def initialize_at_once(home: str) -> tuple[list[Outcome], dict[str, tuple[int | None, int]]]:
    """Every process's outcome, and each pool's (limit, slot count) afterwards."""
    keys = [f"gpu-{uuid.uuid4().hex[:8]}-{trial}" for trial in range(TRIALS)]
    outcomes = at_the_same_instant(partial(_instance, home), _initialize, keys, PROCESSES, preload=__name__)
    instance = _instance(home, -1)
    try:
        infos = {key: instance.event_log_storage.get_concurrency_info(key) for key in keys}
        return outcomes, {key: (info.limit, info.slot_count) for key, info in infos.items()}
    finally:
        instance.dispose()


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        # SQLAlchemy 2.1 maps a plain postgresql:// to psycopg 3; dagster-postgres ships psycopg2.
        yield url.replace("postgresql://", "postgresql+psycopg2://", 1)


def test_simultaneous_first_claims_of_a_pool_all_succeed(postgres_url: str, tmp_path: Path) -> None:
    outcomes, pools = initialize_at_once(_home(tmp_path, postgres_url, "ours"))
    assert [o.error for o in outcomes if o.error] == []
    assert all(o.result is True for o in outcomes)
    assert pools == {key: (DEFAULT_LIMIT, DEFAULT_LIMIT) for key in pools}, "each pool: the default's limit and slots"


def test_canary_dagsters_stock_storage_fails_a_simultaneous_first_claim(postgres_url: str, tmp_path: Path) -> None:
    home = _home(tmp_path, postgres_url, "stock")
    for _batch in range(3):
        outcomes, _pools = initialize_at_once(home)
        if any("InFailedSqlTransaction" in (o.error or "") for o in outcomes):
            return
    pytest.fail(f"the stock storage never failed in {3 * TRIALS} trials: the race was not reproduced")
