"""A run waiting in a pool's line stops when it is cancelled, not when it gets a slot.

Dagster terminates a run by interrupting its worker; the worker captures the interrupt and raises
it at the next place Dagster allows (a step's start or body). Dagster 1.13.27's in-process
executor waits for pool slots in `inner_plan_execution_iterator`'s loop of `get_next_step()` /
`ActiveExecution.sleep_til_ready()`, which never looks at a captured interrupt (the multiprocess
executor's loop does: `check_for_interrupts()`). A request cancelled while its `gpu` step waited
behind other requests therefore kept its place in the line: the warm code server killed its
worker `CANCEL_GRACE_SECONDS` (5 s) later (warm_code_server.py), and a worker without that
escalation waited until a slot freed, started the step and only then stopped.

Here the sleep looks first, as the multiprocess loop does: a captured interrupt marks the
execution interrupted and raises `DagsterExecutionInterruptedError`. Dagster then ends a
CANCELING run CANCELED (`job_execution_iterator`), and the run's concurrency context, on its way
out, takes the waiting step out of the pool's line. A cancel of a waiting run is now as quick as
one claim interval (0.25 s, claim_sleep.py).

Installed with claim_sleep by importing `jewel_dagster.runtime.instance_plugins.pool_claims`.

Private Dagster API (checked against dagster 1.13.27): `dagster._core.execution.plan.active.
ActiveExecution` (its `sleep_til_ready`, `check_for_interrupts`, `mark_interrupted`) and
`dagster._core.errors.DagsterExecutionInterruptedError`. Canary: tests/unit/test_interruptible_wait.py
(a real run waiting for a slot exits within seconds of SIGINT and leaves the line).
"""

from __future__ import annotations

from collections.abc import Callable

from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.execution.plan.active import ActiveExecution

_PATCHED = "_jewel_wait_is_interruptible"
DAGSTER_SLEEP: Callable[[ActiveExecution], None] = ActiveExecution.sleep_til_ready


def sleep_til_ready(self: ActiveExecution) -> None:
    """Dagster's sleep between claim checks, unless the run was interrupted meanwhile."""
    if self.check_for_interrupts():
        self.mark_interrupted()
        raise DagsterExecutionInterruptedError("Execution was interrupted while its steps waited for a pool slot.")
    DAGSTER_SLEEP(self)


def install() -> None:
    """Replace Dagster's sleep on the class, once per process."""
    if getattr(ActiveExecution, _PATCHED, False):
        return
    ActiveExecution.sleep_til_ready = sleep_til_ready  # type: ignore[method-assign]
    setattr(ActiveExecution, _PATCHED, True)
