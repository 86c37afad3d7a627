"""The event log storage that answers a blocked pool claim with a short, fixed retry interval."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster import DagsterEvent, DagsterEventType, DagsterRun

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


def _started(instance: Any, run_id: str, at: float) -> None:
    """A run stored with its RUN_START at `at` (what the storage's line order reads)."""
    instance.run_storage.add_run(DagsterRun(job_name="request", run_id=run_id))
    start = DagsterEvent(DagsterEventType.RUN_START.value, job_name="request")
    instance.run_storage.handle_run_event(run_id, start, datetime.fromtimestamp(at, tz=UTC))


def _line(instance: Any) -> list[tuple[str, str, bool]]:
    """The pool's line as the gateway reads it (gateway.eta's order)."""
    pending = instance.event_log_storage.get_concurrency_info("gpu").pending_steps
    ordered = sorted(pending, key=lambda p: (-(p.priority or 0), p.enqueued_timestamp, p.run_id, p.step_key))
    return [(p.run_id, p.step_key, p.assigned_timestamp is not None) for p in ordered]


@pytest.fixture(params=["sqlite", "postgres"])
def quick_instance(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An instance on our event log storage (SQLite, or PostgreSQL: its CURRENT_TIMESTAMP has
    microseconds, the per-request order is the same)."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            storage: dict[str, Any] = {
                "module": "jewel_dagster.runtime.instance_plugins.pool_claims",
                "class": "QuickClaimSqliteEventLogStorage",
                "config": {"base_dir": str(tmp_path / "events")},
            }
        else:
            url = stack.enter_context(postgres_database()).replace("postgresql://", "postgresql+psycopg2://", 1)
            storage = {
                "module": "jewel_dagster.runtime.instance_plugins.pool_claims",
                "class": "QuickClaimPostgresEventLogStorage",
                "config": {"postgres_url": url},
            }
        instance = stack.enter_context(dg.instance_for_test(overrides={"event_log_storage": storage}))
        instance.event_log_storage.set_concurrency_slots("gpu", 1)
        yield instance


def test_a_requests_next_step_waits_ahead_of_requests_that_began_later(quick_instance: Any) -> None:
    """First come, first served per request. Fails without our `add_pending_step`: Dagster stamps
    each step when it claims (here all in one second, ties broken by run id), so x-third is served
    before y-second and the earliest request's refine after both."""
    now = time.time()
    for run_id, began in (("z-early", now - 30), ("y-second", now - 20), ("x-third", now - 10)):
        _started(quick_instance, run_id, began)
    storage = quick_instance.event_log_storage
    assert storage.claim_concurrency_slot("gpu", "z-early", "segment").is_claimed
    assert not storage.claim_concurrency_slot("gpu", "x-third", "segment").is_claimed
    assert not storage.claim_concurrency_slot("gpu", "y-second", "segment").is_claimed
    storage.free_concurrency_slot_for_step("z-early", "segment")  # y-second, begun before x-third, takes it
    assert not storage.claim_concurrency_slot("gpu", "z-early", "refine").is_claimed
    line = _line(quick_instance)
    assert [(r, s) for r, s, assigned in line if assigned] == [("y-second", "segment")]
    assert [(r, s) for r, s, assigned in line if not assigned] == [("z-early", "refine"), ("x-third", "segment")]
    storage.free_concurrency_slot_for_step("y-second", "segment")
    assert storage.claim_concurrency_slot("gpu", "z-early", "refine").is_claimed
    assert not storage.claim_concurrency_slot("gpu", "x-third", "segment").is_claimed


def test_steps_claimed_in_one_second_keep_their_requests_order(quick_instance: Any) -> None:
    """Fails without our `add_pending_step`: on SQLite Dagster stamps whole seconds, and its line
    breaks the tie by run id, so `a`, which joined last, was listed and served first."""
    storage = quick_instance.event_log_storage
    assert storage.claim_concurrency_slot("gpu", "holder", "generate").is_claimed
    for run_id in ("m", "z", "b", "a"):  # runs not stored (no RUN_START): each stamped as it claims
        assert not storage.claim_concurrency_slot("gpu", run_id, "segment").is_claimed
    assert [r for r, _, assigned in _line(quick_instance) if not assigned] == ["m", "z", "b", "a"]
    storage.free_concurrency_slot_for_step("holder", "generate")
    assert [r for r, _, assigned in _line(quick_instance) if assigned] == ["m"]
