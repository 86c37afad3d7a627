"""A run cancelled while the queue daemon was taking it off the queue is not launched.

Dagster's run queue races its own cancel (its QueuedRunCoordinator says so, dagster-io/dagster
#3323): the daemon reads the run QUEUED, then reports it STARTING and launches it; a cancel that
lands in between writes CANCELING and CANCELED, and the daemon's STARTING then overwrites the
CANCELED status. The run executed to the end after the API had answered the cancel 200
CANCELLED (seen here: a cancel 35 ms after the enqueue, with the daemon woken at once by the
enqueue, queue_wake.py; about one try in three of tests/e2e/test_live.py's CLI cancel).

The event log keeps what the status row lost: both launchers ask it, just before they launch,
for a cancel of the run. Found, the run is reported CANCELED again and not launched. No order of
the two sides escapes: the cancel writes its events before its status, the daemon its status
before the launcher reads the events; so either the launcher sees the cancel, or the cancel's
CANCELED status is written after the daemon's STARTING and stays (Dagster's run worker then
refuses to execute a CANCELED run, and our steps stop at their first checkpoint,
jewel_dagster/defs/cancellation.py). One indexed read per launch.
"""

from __future__ import annotations

import dagster as dg

CANCEL_EVENTS = {dg.DagsterEventType.RUN_CANCELING, dg.DagsterEventType.RUN_CANCELED}


def cancelled_before_launch(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """True, and the run reported CANCELED again, when a cancel of `run` is in its event log.

    A launcher calls this first and launches nothing when it answers True."""
    if not instance.get_records_for_run(run.run_id, of_type=CANCEL_EVENTS, limit=1).records:
        return False
    current = instance.get_run_by_id(run.run_id) or run
    if current.status != dg.DagsterRunStatus.CANCELED:
        instance.report_run_canceled(
            current, message="Not launched: the run was cancelled while it was being taken off the queue."
        )
    return True
