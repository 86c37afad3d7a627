"""One run's state in the seed's shape: shared by GET, the event stream and webhooks.

Kept apart from the routes so that all three answer the same thing for the same run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.models import RunInfo
from gateway.eta import Estimate, seconds_left
from gateway.results import ResultReader
from gateway.schemas import WorkflowState
from gateway.status import position_of, seed_step_of_failure
from jewel_dagster.public_names import hide_addresses

FINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
log = logging.getLogger("gateway.workflow_state")

# run id -> its queue position and end time from the last background refresh (QueueEstimates.lookup).
EstimateLookup = Callable[[str], Estimate | None]


def public_error(message: str, run_id: str) -> str:
    """A failure message fit for the caller: addresses replaced, the run named for the operator."""
    # Service errors name the address they called ("SAM3 (http://10.0.0.7:9000/sam3/segment) timed
    # out"): internal, so the caller sees the service and the error, the log keeps the address.
    shown = hide_addresses(message)
    if shown == message:
        return message
    log.warning("run %s failed: %s", run_id, message)
    return f"{shown} (run {run_id[:8]}; details in the service logs)"


def progress_of(workflow_id: str, run: RunInfo) -> WorkflowState:
    """Status, step and progress only: cheap, no result or failure lookups."""
    position = position_of(run)
    return WorkflowState(
        workflowId=workflow_id, status=position.status, progress=position.progress, currentStep=position.current_step
    )


def state_of(workflow_id: str, run: RunInfo, runs: DagsterRuns, results: ResultReader) -> WorkflowState:
    """The full state: the result once COMPLETED, the failed step and message once FAILED.

    Raises DagsterError when Dagster cannot be asked for the failure or the check result.
    """
    state = progress_of(workflow_id, run)
    if state.status == "COMPLETED":
        state.result = results.result_of(
            workflow_id,
            run.run_id,
            run.job_name,
            runs.fidelity_check,
            lambda asset: runs.artifact_path(workflow_id, asset),
            runs.backends_of,
        )
    elif state.status == "FAILED":
        failed_op, message = runs.failure_of(run.run_id)
        op = failed_op or position_of(run).failed_op
        state.failedStep = seed_step_of_failure(run, op) or state.currentStep
        state.error = public_error(message, run.run_id)
    return state


def with_estimate(state: WorkflowState, run: RunInfo, lookup: EstimateLookup | None) -> WorkflowState:
    """Add `queuePosition` and `etaSeconds` while the run is RUNNING: one dict read, no I/O (the
    snapshot is refreshed in the background, gateway.dagster_api.queue_estimates)."""
    if lookup is None or state.status != "RUNNING":
        return state
    found = lookup(run.run_id)
    if found is not None:
        state.queuePosition = found.position_for(run.status, run.step_starts)
        state.etaSeconds = seconds_left(found, time.time())
    return state
