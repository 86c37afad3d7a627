"""A cancel that holds: a step of a run that was asked to stop stops at its next checkpoint.

Dagster terminates a run by marking it CANCELING and interrupting its worker. The interrupt alone
does not hold: inside a step with a RetryPolicy Dagster turns it into a step retry (execute_plan,
`RetryRequested` from an interrupt), and a step that calls a service from threads may not see it
at all; the run then went on materializing and could end SUCCESS after the API said CANCELLED.
So the steps look themselves, from the run's status in the instance: before each model call and
before each output (`stop_if_cancelled`).

How a step stops: `dg.Failure(allow_retries=False)`. No RetryPolicy retries it; the steps after
it are skipped; and a run with a failed step whose status is CANCELING is ended CANCELED by
Dagster (`job_execution_iterator`: "Run was canceled. Failed steps: [...]"), not FAILURE.
"""

from __future__ import annotations

import dagster as dg

STOPPING = frozenset({dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED})
CANCELLED_METADATA = "cancelled"  # on the Failure, so a reader can tell a cancel from an error


def cancel_requested(instance: dg.DagsterInstance, run_id: str) -> bool:
    """True once the run was asked to stop (one indexed read of the run's row)."""
    run = instance.get_run_by_id(run_id)
    return run is not None and run.status in STOPPING


def stop_if_cancelled(context: dg.OpExecutionContext | dg.AssetExecutionContext, before: str) -> None:
    """Raise a Failure that ends the step (and the run, CANCELED) when the run was asked to stop."""
    if cancel_requested(context.instance, context.run_id):
        context.log.info(f"run cancelled: stopping before {before}")
        raise dg.Failure(
            description=f"the run was cancelled; stopped before {before}",
            metadata={CANCELLED_METADATA: True},
            allow_retries=False,
        )
