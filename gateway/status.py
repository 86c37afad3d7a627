"""Maps a Dagster run and its step stats onto the seed's status, currentStep and progress.

Pure functions: no I/O, so every mapping is tested without a Dagster server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.dagster_api.models import RunInfo
from gateway.schemas import WorkflowStatus
from jewel_dagster.contract import JOB_OPS, SEED_STEP_OF_OP, STEP_PROGRESS, WILL_RETRY_TAG

_RUN_STATUS: dict[str, WorkflowStatus] = {
    "QUEUED": "RUNNING",
    "NOT_STARTED": "RUNNING",
    "STARTING": "RUNNING",
    "STARTED": "RUNNING",
    "MANAGED": "RUNNING",
    "SUSPENDED": "RUNNING",
    "SUCCESS": "COMPLETED",
    "FAILURE": "FAILED",
    "CANCELING": "CANCELLED",
    "CANCELED": "CANCELLED",
}
_DONE = ("SUCCESS", "SKIPPED")
# Dagster stores a failed run's FAILURE status first and its `dagster/will_retry` tag a moment
# later (DagsterInstance.handle_new_event, two writes): read in between, a run that is about to be
# retried looked FAILED (a final SSE event, a webhook) and then RUNNING again. A failure this
# recent without the tag is not final yet; past it, a run without the tag (run retries off) is.
RETRY_DECISION_SECONDS = 5.0


@dataclass(frozen=True)
class WorkflowPosition:
    status: WorkflowStatus
    current_step: str
    progress: int
    failed_op: str | None = None


def workflow_status(run_status: str) -> WorkflowStatus:
    return _RUN_STATUS.get(run_status, "RUNNING")


def position_of(run: RunInfo, now: float | None = None) -> WorkflowPosition:
    status: WorkflowStatus = workflow_status(run.status)
    if run.status == "FAILURE" and _retry_may_follow(run, time.time() if now is None else now):
        status = "RUNNING"  # Dagster's retry daemon re-launches it: not over yet for the person waiting
    if status == "COMPLETED":
        return WorkflowPosition(status, "COMPLETED", STEP_PROGRESS["COMPLETED"])
    ops = JOB_OPS.get(run.job_name) or list(SEED_STEP_OF_OP)
    by_key = {s.step_key: s.status for s in run.steps}
    failed = next((op for op in ops if by_key.get(op) == "FAILURE"), None)
    # The current step is the first one not finished yet; the executor runs them in order.
    current = failed or next((op for op in ops if by_key.get(op) not in _DONE), ops[-1])
    seed_step = SEED_STEP_OF_OP[current]
    return WorkflowPosition(status, seed_step, STEP_PROGRESS[seed_step], failed_op=failed)


def _retry_may_follow(run: RunInfo, now: float) -> bool:
    will_retry = run.tags.get(WILL_RETRY_TAG)
    if will_retry is not None:
        return will_retry == "true"
    return run.end_time is not None and now - run.end_time < RETRY_DECISION_SECONDS
