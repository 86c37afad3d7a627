"""Maps a Dagster run, its planned and materialized assets and its steps onto the seed's status,
currentStep and progress.

Pure functions: no I/O, so every mapping is tested without a Dagster server.

The current step is the seed step of the first asset, in seed order, that the run plans to
materialize and has not materialized yet (nor skipped: its step ended without it). A run of any
subset of the assets (the UI's "Materialize selected", a re-execution from failure, a run retry)
plans only what it executes, so it starts at the first seed step it performs, and since a run's
materializations only accumulate it never goes back. The Dagster step layout does not matter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.dagster_api.models import RunAssets, RunInfo
from gateway.schemas import WorkflowStatus
from jewel_dagster.contract import SEED_STEP_OF_ASSET, STEP_PROGRESS, AssetName

_RUN_STATUS: dict[str, WorkflowStatus] = {
    "QUEUED": "RUNNING",
    "NOT_STARTED": "RUNNING",
    "STARTING": "RUNNING",
    "STARTED": "RUNNING",
    "MANAGED": "RUNNING",
    "SUSPENDED": "RUNNING",
    "SUCCESS": "COMPLETED",
    "FAILURE": "FAILED",
    # A cancel asked for, not done: the run may still end SUCCESS (a step that does not stop) and
    # must not have been reported CANCELLED first. Temporal, too, reports a workflow whose cancel
    # was requested as running until it ends.
    "CANCELING": "RUNNING",
    "CANCELED": "CANCELLED",
}
# Seed order: by the seed step's progress, then as the contract lists the assets.
_ORDER = {asset.value: (STEP_PROGRESS[SEED_STEP_OF_ASSET[asset]], i) for i, asset in enumerate(AssetName)}


@dataclass(frozen=True)
class WorkflowPosition:
    status: WorkflowStatus
    current_step: str
    progress: int
    failed_op: str | None = None  # the Dagster step that failed (FAILURE only)


def workflow_status(run_status: str) -> WorkflowStatus:
    return _RUN_STATUS.get(run_status, "RUNNING")


def position_of(run: RunInfo, now: float | None = None) -> WorkflowPosition:
    status: WorkflowStatus = workflow_status(run.status)
    if run.retry_may_follow(time.time() if now is None else now):
        status = "RUNNING"  # Dagster's retry daemon re-launches it: not over yet for the person waiting
    if status == "COMPLETED":
        return WorkflowPosition(status, "COMPLETED", STEP_PROGRESS["COMPLETED"])
    steps = {s.step_key: s.status for s in run.steps}
    failed = next((s.step_key for s in run.steps if s.status == "FAILURE"), None) if run.status == "FAILURE" else None
    # A run is stored (NOT_STARTED) before its planned events, written one by one next: read in
    # between, a part of the plan placed it too far on (seen: 30 %, then 15 %, then 5 %). Its
    # submission (QUEUED, or STARTING with the default coordinator) comes after the whole plan.
    planned = run.assets if run.status != "NOT_STARTED" else None
    seed_step = current_seed_step(planned or RunAssets(), steps)
    return WorkflowPosition(status, seed_step, STEP_PROGRESS[seed_step], failed_op=failed)


def current_seed_step(assets: RunAssets, steps: dict[str, str | None]) -> str:
    """The seed step of the first planned asset not done yet (see the module's docstring); the
    last planned one's once all are done. A run whose plan is not known yet (none read): the first."""
    planned = sorted((a for a in assets.planned if a in _ORDER), key=_ORDER.__getitem__)
    if not planned:
        return next(iter(STEP_PROGRESS))

    def done(asset: str) -> bool:
        # A step that ended without an output (skipped, optional) is past it; a failed step is
        # where the run stopped, so its assets not materialized stay the current step.
        step_status = steps.get(assets.planned[asset])
        return asset in assets.materialized or step_status in ("SUCCESS", "SKIPPED")

    current = next((a for a in planned if not done(a)), planned[-1])
    return SEED_STEP_OF_ASSET[current]


def seed_step_of_failure(run: RunInfo, step_key: str | None) -> str | None:
    """The seed step a failed Dagster step stopped at: its first planned asset not materialized
    (with fat steps, one step makes assets of several seed steps); None when the step plans none."""
    assets = run.assets or RunAssets()
    mine = sorted((a for a, s in assets.planned.items() if s == step_key and a in _ORDER), key=_ORDER.__getitem__)
    if not mine:
        return None
    stopped = next((a for a in mine if a not in assets.materialized), mine[-1])
    return SEED_STEP_OF_ASSET[stopped]
