"""The event log storage that answers a blocked pool claim with a short, fixed retry interval."""

from __future__ import annotations

from pathlib import Path

from jewel_dagster.runtime.pool_claims import QuickClaimSqliteEventLogStorage, SqliteEventLogStorage


def test_a_blocked_claim_is_retried_after_the_configured_interval(tmp_path: Path) -> None:
    storage = QuickClaimSqliteEventLogStorage.from_config_value(
        None, {"base_dir": str(tmp_path), "claim_interval_seconds": 0.2}
    )
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
