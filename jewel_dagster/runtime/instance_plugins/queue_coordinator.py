"""The run coordinator dagster.yaml names: Dagster's QueuedRunCoordinator that wakes the queue
daemon when a run is queued (processes/queue_daemon.py has the why and the daemon's side).

Kept apart from the daemon's loop so that the webserver, which loads this class from dagster.yaml,
imports no daemon code, and `python -m ...queue_daemon` (its own `__main__`) checks against the
one class the instance loads.
"""

from __future__ import annotations

import dagster as dg

from jewel_dagster.runtime.instance_plugins.queue_wake import wake


class PromptQueuedRunCoordinator(dg.QueuedRunCoordinator):
    """Dagster's QueuedRunCoordinator (same configuration) that wakes the queue daemon when a run
    is queued: the gateway's launches, the sensors' and schedules' runs, run retries."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = super().submit_run(context)
        if run.status == dg.DagsterRunStatus.QUEUED:
            wake(self._instance)
        return run
