"""Maps a Dagster run and its step stats onto the seed's status, currentStep and progress.

Pure functions: no I/O, so every mapping is tested without a Dagster server.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class WorkflowPosition:
    status: WorkflowStatus
    current_step: str
    progress: int
    failed_op: str | None = None


def workflow_status(run_status: str) -> WorkflowStatus:
    return _RUN_STATUS.get(run_status, "RUNNING")


def position_of(run: RunInfo) -> WorkflowPosition:
    status: WorkflowStatus = workflow_status(run.status)
    if run.status == "FAILURE" and run.tags.get(WILL_RETRY_TAG) == "true":
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
