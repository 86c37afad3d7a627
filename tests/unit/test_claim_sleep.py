"""A run blocked on a pool slot sleeps between its claim checks (jewel_dagster/runtime/executor/claim_sleep.py)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from unittest import mock

import dagster as dg

from jewel_dagster.runtime.executor import claim_sleep
from jewel_dagster.runtime.instance_plugins import pool_claims  # importing pool_claims installs the patch

Context = claim_sleep.InstanceConcurrencyContext
BLOCKED_SECONDS = 2.0


def _pending(seconds_ahead: float) -> Any:
    """A context with one claim pending, due `seconds_ahead` from now (its other state unused)."""
    context = object.__new__(Context)
    context._pending_claims = {"generations"}
    context._pending_timeouts = defaultdict(float, {"generations": time.time() + seconds_ahead})
    return context


def test_canary_dagsters_interval_is_still_zero_for_a_claim_due_later() -> None:
    """When this fails, Dagster sleeps between claim checks itself: drop claim_sleep.py."""
    assert claim_sleep.DAGSTER_INTERVAL(_pending(5.0)) <= 0


def test_our_interval_is_the_time_until_the_next_check() -> None:
    assert 4.0 < claim_sleep.interval_to_next_pending_claim_check(_pending(5.0)) <= 5.0
    assert claim_sleep.interval_to_next_pending_claim_check(_pending(-1.0)) == 0.0
    assert Context.interval_to_next_pending_claim_check is claim_sleep.interval_to_next_pending_claim_check


@dg.asset(pool="gpu")
def on_the_gpu() -> int:
    return 1


def test_a_run_waiting_for_a_pool_slot_checks_a_few_times_a_second_not_thousands(tmp_path: Path) -> None:
    """Canary of the installed patch: a real in-process run, its only step blocked on the `gpu`
    pool for 2 s. Dagster's loop asks for the interval on every pass; spinning, that was thousands
    of passes (and a CPU core); sleeping, about one per 0.25 s claim interval."""
    storage = {
        "module": pool_claims.__name__,
        "class": pool_claims.QuickClaimSqliteEventLogStorage.__name__,
        "config": {"base_dir": str(tmp_path / "history"), "claim_interval_seconds": 0.25},
    }
    asked = 0
    installed = Context.interval_to_next_pending_claim_check  # ours, unless the install broke

    def counted(self: Any) -> float:
        nonlocal asked
        asked += 1
        return installed(self)

    with dg.instance_for_test(overrides={"event_log_storage": storage}, temp_dir=str(tmp_path)) as instance:
        assert isinstance(instance.event_log_storage, pool_claims.QuickClaimSqliteEventLogStorage)
        instance.event_log_storage.set_concurrency_slots("gpu", 1)
        assert instance.event_log_storage.claim_concurrency_slot("gpu", "another-run", "step").is_claimed
        outcome: list[bool] = []
        with mock.patch.object(Context, "interval_to_next_pending_claim_check", counted):
            run = threading.Thread(
                target=lambda: outcome.append(dg.materialize([on_the_gpu], instance=instance).success)
            )
            run.start()
            held_until = time.monotonic() + BLOCKED_SECONDS
            while time.monotonic() < held_until and run.is_alive():
                time.sleep(0.1)
            assert run.is_alive(), "the run did not wait for the slot"
            instance.event_log_storage.free_concurrency_slot_for_step("another-run", "step")
            run.join(timeout=60)
    assert outcome == [True]
    # 2 s at one check per 0.25 s is ~8 passes (+ a few around each claim); spinning was > 1,000.
    assert 0 < asked < 60, asked
