"""A step blocked on a pool slot sleeps until its next claim check instead of spinning.

Dagster 1.13.27's in-process executor loops `get_next_step()` / `sleep_til_ready()` while every
runnable step waits for a pool slot. `ActiveExecution.sleep_interval` asks the run's
`InstanceConcurrencyContext.interval_to_next_pending_claim_check()`, which answers
`min([0, *(ready_at - now)])`: never more than 0, so the loop never sleeps. A run whose `gpu` step
waits for a slot burned ~0.6-0.75 CPU-seconds a second (DAGSTER-NOTES), taking the CPU the runs
holding the slots need. (Dagster PR #20367, "fix pending claim check sleep intervals", named the
same zero sleep in 2024 and was closed unmerged.) Here the answer is the time until the earliest
pending claim may be asked again, never below 0: with our storages' 0.25 s claim interval
(pool_claims.py) a blocked step sleeps a quarter second between checks, so the GPU still gets
its next request within 0.25 s of a slot freeing.

Installed by importing `jewel_dagster.runtime.instance_plugins.pool_claims`, i.e. in every process whose instance
uses our event log storage (run workers, Celery workers); Dagster's stock settings
(`DAGSTER_STOCK_SETTINGS`) name Dagster's storage and keep Dagster's loop.

Private Dagster API (checked against dagster 1.13.27): the class
`dagster._core.execution.plan.instance_concurrency_context.InstanceConcurrencyContext`, its
method `interval_to_next_pending_claim_check` and its `_pending_claims` / `_pending_timeouts`
attributes. Canaries in tests/unit/test_claim_sleep.py: Dagster's own method still answers 0 for
a claim pending in the future (drop this patch when it stops), and a run blocked on a slot loops
a few times a second, not thousands.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

_PATCHED = "_jewel_sleeps_between_claims"
DAGSTER_INTERVAL: Callable[[InstanceConcurrencyContext], float] = (
    InstanceConcurrencyContext.interval_to_next_pending_claim_check
)


def interval_to_next_pending_claim_check(self: InstanceConcurrencyContext) -> float:
    """Seconds until the earliest pending claim may be checked again (0 when one is due)."""
    due = [at for step, at in self._pending_timeouts.items() if step in self._pending_claims]
    return max(0.0, min(due) - time.time()) if due else 0.0


def install() -> None:
    """Replace Dagster's interval on the class, once per process."""
    if getattr(InstanceConcurrencyContext, _PATCHED, False):
        return
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = interval_to_next_pending_claim_check  # type: ignore[method-assign]
    setattr(InstanceConcurrencyContext, _PATCHED, True)
