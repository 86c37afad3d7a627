"""Cancelling a workflow: terminate its run and wait for Dagster to say it stopped, or cancel
its background start before the run exists."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from fastapi import HTTPException, status

from gateway.cancels import POLL_SECONDS, await_stop
from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError, DagsterUnavailable
from gateway.dagster_api.models import RunInfo
from gateway.schemas import StartResponse
from gateway.settings import GatewaySettings
from gateway.starts import PendingStart, mark_cancelled, read_start, state_of_start
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
    if run.retry_may_follow(time.time()):
        run = _retry_of(runs, settings, workflow_id, run, caller)
    state = position_of(run).status
    if state != "RUNNING":
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"workflow {workflow_id} already ended: {state}")
    if run.status != "CANCELING":  # asked before: wait for it again
        _terminate(runs, settings, workflow_id, run.run_id, caller)
    return _settled_cancel(runs, settings, workflow_id, run.run_id)


def _retry_of(runs: DagsterRuns, settings: GatewaySettings, workflow_id: str, failed: RunInfo, caller: str) -> RunInfo:
    """The run to cancel when the newest one FAILED and Dagster's retry of it is coming (GET says
    RUNNING): the retry, once it exists; or the failed run, once Dagster gave the retry up. The
    failed run itself cannot be terminated: asking Dagster to was refused until the deadline, and
    the retry then ran on after the cancel (or answered 409 FAILED while GET said RUNNING). Waits
    up to CANCEL_WAIT_SECONDS; still undecided then, 503 with Retry-After (ask again)."""
    deadline = time.monotonic() + settings.cancel_wait_seconds
    while True:
        runs.forget(workflow_id)
        latest = owned_run(runs, workflow_id, caller)
        if latest.run_id != failed.run_id or not latest.retry_may_follow(time.time()):
            return latest
        if time.monotonic() >= deadline:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"workflow {workflow_id} failed and its retry is being launched; ask again to cancel the retry",
                headers={"Retry-After": "5"},
            )
        time.sleep(POLL_SECONDS)


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
    """Cancel a start whose run did not exist a moment ago: its cancel blob makes the launcher skip it.

    Final at once (CANCELLED) only when no launch is under way: the record, read after the cancel
    blob was written, announces none, so the launcher reads the cancel before it launches (see
    gateway/starts.py). A launch under way is waited for, up to CANCEL_WAIT_SECONDS: its run is
    then stopped and answered for as a running run's cancel (`_cancel_launched`); a launcher that
    saw the cancel in time closes the record (CANCELLED); still under way at the deadline, 202 and
    RUNNING (the launcher stops the run it launches)."""
    workflow_id = start.workflowId
    if start.state == "failed" or (start.state == "cancelled" and not start.launch_under_way):
        ended = state_of_start(start).status
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"workflow {workflow_id} already ended: {ended}")
    try:
        mark_cancelled(store, workflow_id)  # False when cancelled before (the launch still under way)
    except BlobStoreError as exc:
        raise pipeline_unavailable(DagsterUnavailable(f"cancel not stored: {exc}")) from exc
    deadline = time.monotonic() + settings.cancel_wait_seconds
    while True:
        current = read_start(store, workflow_id)  # read after the cancel was written
        try:
            run = runs.latest_run(workflow_id)
        except DagsterError:
            run = None  # the launcher reads the cancel before it launches, or stops the run after
        if run is not None and run.tags.get(LAUNCH_TAG) == start.launch_tag:
            return _cancel_launched(runs, settings, workflow_id, run, deadline)
        if current is not None and current.state == "failed":
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"workflow {workflow_id} already ended: FAILED")
        if current is not None and not current.launch_under_way:
            runs.forget(workflow_id)
            return CancelAnswer(StartResponse(workflowId=workflow_id, status="CANCELLED"))
        # Under way, or the record gone (the run exists: Dagster did not answer for it just now).
        if time.monotonic() >= deadline:
            return CancelAnswer(StartResponse(workflowId=workflow_id, status="RUNNING"), still_stopping=True)
        time.sleep(POLL_SECONDS)


def _cancel_launched(
    runs: DagsterRuns, settings: GatewaySettings, workflow_id: str, run: RunInfo, deadline: float
) -> CancelAnswer:
    """The run of a cancelled start exists: answered as a running run's cancel (CANCELLED once it
    stopped, 409 with the final state if it ended otherwise, 202 while it is still stopping).

    The launcher, seeing the cancel after its launch, terminates the run too: a terminate refused
    because its terminate took first is no conflict, so a refusal is answered by what the run is
    then (a CANCELED run is this cancel's CANCELLED). A run still refusing (STARTING) at the
    deadline answers 202: the launcher goes on asking, where a running run's cancel says 503."""
    while True:
        state = position_of(run).status
        if run.status == "CANCELING":
            return _settled_cancel(runs, settings, workflow_id, run.run_id)
        if state == "CANCELLED":
            runs.forget(workflow_id)
            return CancelAnswer(StartResponse(workflowId=workflow_id, status="CANCELLED"))
        if state != "RUNNING":
            runs.forget(workflow_id)
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"workflow {workflow_id} already ended: {state}")
        try:
            runs.terminate(run.run_id)
        except DagsterUnavailable as exc:
            raise pipeline_unavailable(exc) from exc
        except DagsterError as exc:  # STARTING, or stopped meanwhile: look again
            log.info("cancel of %s: terminate refused (%s); looking at the run again", workflow_id, exc)
        else:
            return _settled_cancel(runs, settings, workflow_id, run.run_id)
        if time.monotonic() >= deadline:
            return CancelAnswer(StartResponse(workflowId=workflow_id, status="RUNNING"), still_stopping=True)
        time.sleep(POLL_SECONDS)
        runs.forget(workflow_id)
        try:
            latest = runs.latest_run(workflow_id)
        except DagsterError as exc:
            raise pipeline_unavailable(exc) from exc
        if latest is None:  # deleted meanwhile (retention): nothing runs
            return CancelAnswer(StartResponse(workflowId=workflow_id, status="CANCELLED"))
        run = latest
