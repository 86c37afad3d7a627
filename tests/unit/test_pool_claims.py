"""The event log storage that answers a blocked pool claim with a short, fixed retry interval."""

from __future__ import annotations

from pathlib import Path

import pytest

from jewel_dagster.runtime.instance_plugins.pool_claims import (
    QuickClaimPostgresEventLogStorage,
    QuickClaimSqliteEventLogStorage,
    SqliteEventLogStorage,
)
from tests.support.infra import postgres_database


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_blocked_claim_is_retried_after_the_configured_interval(backend: str, tmp_path: Path) -> None:
    """Canary: fails (interval None) if our `claim_concurrency_slot` override stops taking effect."""
    if backend == "sqlite":
        _blocked_claim_interval(
            QuickClaimSqliteEventLogStorage.from_config_value(
                None, {"base_dir": str(tmp_path), "claim_interval_seconds": 0.2}
            )
        )
        return
    with postgres_database() as url:
        # SQLAlchemy 2.1 maps a plain postgresql:// to psycopg 3; dagster-postgres ships psycopg2.
        pg_url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
        storage = QuickClaimPostgresEventLogStorage.from_config_value(
            None, {"postgres_url": pg_url, "claim_interval_seconds": 0.2}
        )
        try:
            _blocked_claim_interval(storage)
        finally:
            storage.dispose()


def _blocked_claim_interval(storage: QuickClaimSqliteEventLogStorage | QuickClaimPostgresEventLogStorage) -> None:
    storage.set_concurrency_slots("gpu", 1)
    first = storage.claim_concurrency_slot("gpu", "run-a", "generations")
    assert first.is_claimed and first.sleep_interval is None
    blocked = storage.claim_concurrency_slot("gpu", "run-b", "generations")
    assert not blocked.is_claimed and blocked.sleep_interval == 0.2
    storage.free_concurrency_slot_for_step("run-a", "generations")
    assert storage.claim_concurrency_slot("gpu", "run-b", "generations").is_claimed


def test_dagsters_own_storage_leaves_the_interval_to_the_backoff(tmp_path: Path) -> None:
    """What the subclass changes: stock storage names no interval, so steps back off to 15 s."""
    storage = SqliteEventLogStorage(str(tmp_path))
    storage.set_concurrency_slots("gpu", 1)
    storage.claim_concurrency_slot("gpu", "run-a", "generations")
    assert storage.claim_concurrency_slot("gpu", "run-b", "generations").sleep_interval is None
