"""Cancelling a workflow: terminate its run and wait for Dagster to say it stopped, or cancel
its background start before the run exists."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from fastapi import HTTPException, status

from gateway.cancels import await_stop
from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError, DagsterUnavailable
from gateway.schemas import StartResponse
from gateway.settings import GatewaySettings
from gateway.starts import PendingStart, forget_start, mark_cancelled, state_of_start
from gateway.status import position_of, workflow_status
from gateway.workflows.errors import pipeline_unavailable
from gateway.workflows.ownership import owned_run, owned_run_or_start
from jewel_dagster.contract import LAUNCH_TAG
from jewel_dagster.resources.blob_store import BlobStore, BlobStoreError

log = logging.getLogger("gateway.workflows")


@dataclass(frozen=True)
class CancelAnswer:
    """The body of a cancel, and whether the run is still stopping (answered 202, not 200)."""

    body: StartResponse
    still_stopping: bool = False


def cancel(
    runs: DagsterRuns, store: BlobStore, settings: GatewaySettings, workflow_id: str, caller: str
) -> CancelAnswer:
    """Terminate the request's running run, or cancel its start before the run exists.

    CANCELLED only once Dagster says the run stopped (it waits up to CANCEL_WAIT_SECONDS): a run
    asked to stop can still finish, and the API must not have said CANCELLED first. A run that
    ended meanwhile (also between the look and the terminate, which Dagster then refuses) answers
    409 with its final state; one still stopping at the deadline answers 202 and RUNNING.
    """
    run = owned_run_or_start(runs, store, workflow_id, caller)
    if isinstance(run, PendingStart):
        return _cancel_start(runs, store, settings, run)
    state = position_of(run).status
    if state != "RUNNING":
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"workflow {workflow_id} already ended: {state}")
    if run.status != "CANCELING":  # asked before: wait for it again
        _terminate(runs, settings, workflow_id, run.run_id, caller)
    return _settled_cancel(runs, settings, workflow_id, run.run_id)


def _terminate(runs: DagsterRuns, settings: GatewaySettings, workflow_id: str, run_id: str, caller: str) -> None:
    """Ask Dagster to terminate the run. A run created a moment ago (NOT_STARTED, while the
    launcher submits it; STARTING, while its Celery task waits for a worker) is refused by
    Dagster's terminate: asked again until CANCEL_WAIT_SECONDS, as long as the run still runs;
    one that ended meanwhile is a 409, one still not startable at the deadline a 503 (ask again)."""
    deadline = time.monotonic() + settings.cancel_wait_seconds
    while True:
        try:
            runs.terminate(run_id)
            return
        except DagsterError as exc:
            runs.forget(workflow_id)
            latest = owned_run(runs, workflow_id, caller)
            now = position_of(latest).status
            if now != "RUNNING" and not isinstance(exc, DagsterUnavailable):
                raise HTTPException(
                    status.HTTP_409_CONFLICT, detail=f"workflow {workflow_id} already ended: {now}"
                ) from None
            if isinstance(exc, DagsterUnavailable):
                raise pipeline_unavailable(exc) from exc
            if time.monotonic() >= deadline:
                if latest.status in ("NOT_STARTED", "STARTING"):
                    raise HTTPException(
                        status.HTTP_503_SERVICE_UNAVAILABLE,
                        detail=f"workflow {workflow_id} is still being started and cannot be stopped yet; ask again",
                        headers={"Retry-After": "5"},
                    ) from None
                raise pipeline_unavailable(exc) from exc
            time.sleep(0.1)


def _settled_cancel(runs: DagsterRuns, settings: GatewaySettings, workflow_id: str, run_id: str) -> CancelAnswer:
    """The answer to a cancel once Dagster was asked to terminate `run_id` (see `cancel`)."""
    runs.forget(workflow_id)
    try:
        outcome = await_stop(runs, workflow_id, run_id, settings.cancel_wait_seconds)
    except DagsterError as exc:
        raise pipeline_unavailable(exc) from exc
    finally:
        runs.forget(workflow_id)
    if outcome.stopped and outcome.run.status != "CANCELED":
        ended = workflow_status(outcome.run.status)
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"workflow {workflow_id} already ended: {ended}")
    if not outcome.stopped:
        return CancelAnswer(StartResponse(workflowId=workflow_id, status="RUNNING"), still_stopping=True)
    return CancelAnswer(StartResponse(workflowId=workflow_id, status="CANCELLED"))


def _cancel_start(runs: DagsterRuns, store: BlobStore, settings: GatewaySettings, start: PendingStart) -> CancelAnswer:
    """Cancel a start whose run does not exist yet: its cancel blob makes the launcher skip it.
    The launcher may be launching it right now: if the run is there already, it is terminated
    here (and the launcher, seeing the cancel after its launch, terminates it too)."""
    workflow_id = start.workflowId
    if start.state != "pending":
        ended = state_of_start(start).status
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"workflow {workflow_id} already ended: {ended}")
    try:
        mark_cancelled(store, workflow_id)
    except BlobStoreError as exc:
        raise pipeline_unavailable(DagsterUnavailable(f"cancel not stored: {exc}")) from exc
    try:
        run = runs.latest_run(workflow_id)
    except DagsterError:
        run = None  # the launcher reads the cancel before it launches, or terminates after
    if run is not None and run.tags.get(LAUNCH_TAG) == start.launch_tag:
        forget_start(store, workflow_id)
        if position_of(run).status == "RUNNING":
            try:
                if run.status != "CANCELING":
                    runs.terminate(run.run_id)
            except DagsterError as exc:
                log.warning("cancel of %s: terminate failed (the launcher may have done it): %s", workflow_id, exc)
            else:
                return _settled_cancel(runs, settings, workflow_id, run.run_id)
    runs.forget(workflow_id)
    return CancelAnswer(StartResponse(workflowId=workflow_id, status="CANCELLED"))
