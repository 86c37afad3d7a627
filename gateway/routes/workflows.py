"""The seed's /workflow endpoints on top of Dagster runs of the request's partition."""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, status

from gateway.dagster_runs import DagsterError, DagsterRuns, DagsterUnavailable, RunInfo
from gateway.deps import ResultsDep, RunsDep, SettingsDep, StoreDep
from gateway.schemas import BrushStroke, GenerateRequest, StartRequest, StartResponse, WorkflowState
from gateway.status import position_of
from gateway.uploads import decode_base64_image
from jewel_dagster.steps import FULL_JOB, GENERATE_JOB, PREPROCESS_JOB, SEED_STEP_OF_OP
from jewel_dagster.storage import BlobStore, BlobStoreError, artifact_path

router = APIRouter(prefix="/workflow", tags=["workflow"])

WORKFLOW_ID = re.compile(r"^jewelry-gen-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_OWN_ARTIFACT = re.compile(r"^requests/(?P<rid>[^/]+)/(?P<name>[a-z_]+)\.png$")


def _unavailable(exc: DagsterError) -> HTTPException:
    if isinstance(exc, DagsterUnavailable):
        return HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"The pipeline is unavailable: {exc}. Start Dagster (make run) and retry.",
        )
    return HTTPException(status.HTTP_502_BAD_GATEWAY, detail=f"The pipeline refused the request: {exc}")


def _strokes(strokes: list[BrushStroke]) -> list[dict[str, Any]]:
    return [s.model_dump() for s in strokes]


def _launch(runs: DagsterRuns, job: str, request_id: str, run_config: dict[str, Any], new: bool) -> StartResponse:
    try:
        if new:
            runs.add_partition(request_id)
        try:
            runs.launch(job, request_id, run_config)
        except DagsterError:
            if new:
                runs.delete_partition(request_id)
            raise
    except DagsterError as exc:
        raise _unavailable(exc) from exc
    return StartResponse(workflowId=request_id, status="RUNNING")


def _new_request_id() -> str:
    return f"jewelry-gen-{uuid.uuid4()}"


def _start(job: str, body: StartRequest, runs: DagsterRuns, store: BlobStore, settings: SettingsDep) -> StartResponse:
    image = decode_base64_image(body.originalImageBase64, settings.max_image_bytes, settings.max_image_pixels)
    if not runs.ping():
        # Checked before storing anything, so an outage leaves no orphaned upload behind.
        raise _unavailable(DagsterUnavailable("Dagster is not reachable"))
    request_id = _new_request_id()
    upload_uri = store.put(f"requests/{request_id}/upload", image)
    ops: dict[str, Any] = {
        "original_image": {"config": {"image_uri": upload_uri}},
        "jewelry_mask": {"config": {"points": [p.model_dump() for p in body.maskPoints]}},
    }
    if job == FULL_JOB:
        ops["refined_mask"] = {"config": {"brush_strokes": _strokes(body.brushStrokes)}}
    return _launch(runs, job, request_id, {"ops": ops}, new=True)


@router.post("/start", response_model=StartResponse)
def start_workflow(body: StartRequest, runs: RunsDep, store: StoreDep, settings: SettingsDep) -> StartResponse:
    """Photo and clicks to generations: the whole pipeline."""
    return _start(FULL_JOB, body, runs, store, settings)


@router.post("/preprocess", response_model=StartResponse)
def preprocess_workflow(body: StartRequest, runs: RunsDep, store: StoreDep, settings: SettingsDep) -> StartResponse:
    """Upload, resize, background and mask; the result carries imageUri and maskUri for /generate."""
    return _start(PREPROCESS_JOB, body, runs, store, settings)


def _path_in_store(store: BlobStore, uri: str, field: str) -> str:
    try:
        path = store.path_of(uri)
    except BlobStoreError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"{field}: {exc}") from None
    if not store.exists_path(path):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{field}: nothing is stored at {uri}")
    return path


@router.post("/generate", response_model=StartResponse)
def generate_workflow(body: GenerateRequest, runs: RunsDep, store: StoreDep) -> StartResponse:
    """Refine a preprocessed mask with brush strokes and generate.

    URIs from one earlier preprocess run continue that request's partition (one lineage);
    any other pair of stored blobs starts a new request with them as inputs.
    """
    image_path = _path_in_store(store, body.imageUri, "imageUri")
    mask_path = _path_in_store(store, body.maskUri, "maskUri")
    if not runs.ping():
        raise _unavailable(DagsterUnavailable("Dagster is not reachable"))
    image_match, mask_match = _OWN_ARTIFACT.match(image_path), _OWN_ARTIFACT.match(mask_path)
    strokes = {"refined_mask": {"config": {"brush_strokes": _strokes(body.brushStrokes)}}}
    if (
        image_match
        and mask_match
        and image_match["rid"] == mask_match["rid"]
        and image_path == artifact_path(image_match["rid"], "background_removed_image", "png")
        and mask_path == artifact_path(mask_match["rid"], "jewelry_mask", "png")
    ):
        return _launch(runs, GENERATE_JOB, image_match["rid"], {"ops": strokes}, new=False)
    ops = {
        "original_image": {"config": {"image_uri": body.imageUri}},
        "background_removed_image": {"config": {"mode": "keep"}},
        "jewelry_mask": {"config": {"mask_uri": body.maskUri}},
        **strokes,
    }
    return _launch(runs, FULL_JOB, _new_request_id(), {"ops": ops}, new=True)


def _latest_run(runs: DagsterRuns, workflow_id: str) -> RunInfo:
    if not WORKFLOW_ID.match(workflow_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no workflow {workflow_id!r}")
    try:
        run = runs.latest_run(workflow_id)
    except DagsterError as exc:
        raise _unavailable(exc) from exc
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no workflow {workflow_id!r}")
    return run


@router.get("/{workflow_id}", response_model=WorkflowState, response_model_exclude_none=True)
def get_workflow(workflow_id: str, runs: RunsDep, results: ResultsDep) -> WorkflowState:
    """Status of the request's newest run; results once it completed."""
    run = _latest_run(runs, workflow_id)
    position = position_of(run)
    state = WorkflowState(
        workflowId=workflow_id, status=position.status, progress=position.progress, currentStep=position.current_step
    )
    if position.status == "COMPLETED":
        try:
            state.result = results.result_of(workflow_id, run.run_id, run.job_name, runs.fidelity_check)
        except DagsterError as exc:
            raise _unavailable(exc) from exc
    elif position.status == "FAILED":
        try:
            failed_op, message = runs.failure_of(run.run_id)
        except DagsterError as exc:
            raise _unavailable(exc) from exc
        op = failed_op or position.failed_op
        state.failedStep = SEED_STEP_OF_OP.get(op or "", position.current_step)
        state.error = message
    return state


@router.post("/{workflow_id}/cancel", response_model=StartResponse)
def cancel_workflow(workflow_id: str, runs: RunsDep) -> StartResponse:
    """Terminate the request's running run."""
    run = _latest_run(runs, workflow_id)
    state = position_of(run).status
    if state != "RUNNING":
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"workflow {workflow_id} already ended: {state}")
    try:
        runs.terminate(run.run_id)
    except DagsterError as exc:
        raise _unavailable(exc) from exc
    return StartResponse(workflowId=workflow_id, status="CANCELLED")
