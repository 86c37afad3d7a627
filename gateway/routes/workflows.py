"""The seed's /workflow endpoints on top of Dagster runs of the request's partition."""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, status

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError, DagsterUnavailable
from gateway.dagster_api.models import RunInfo
from gateway.deps import ResultsDep, RunsDep, SettingsDep, StoreDep
from gateway.schemas import GenerateRequest, StartRequest, StartResponse, WorkflowState
from gateway.security import ANONYMOUS, CallerDep
from gateway.settings import GatewaySettings
from gateway.status import position_of
from gateway.uploads import decode_base64_image
from gateway.webhooks import WebhookRefused, check_webhook_url, store_webhook_url
from gateway.workflow_state import state_of
from jewel_dagster.contract import (
    FULL_JOB,
    GENERATE_JOB,
    IDEMPOTENCY_TAG,
    LAUNCH_TAG,
    OWNER_TAG,
    PARTITION_TAG,
    PREPROCESS_JOB,
    AssetName,
)
from jewel_dagster.defs.config import BrushStroke
from jewel_dagster.resources.blob_store import BlobStore, BlobStoreError, artifact_path

router = APIRouter(prefix="/workflow", tags=["workflow"])

WORKFLOW_ID = re.compile(r"^jewelry-gen-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_OWN_ARTIFACT = re.compile(r"^requests/(?P<rid>[^/]+)/(?P<name>[a-z_]+)\.png$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
_idempotency_locks: dict[str, threading.Lock] = {}
_idempotency_guard = threading.Lock()

IdempotencyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="Retry-safe starts: the same key returns the same workflow."),
]


def pipeline_unavailable(exc: DagsterError) -> HTTPException:
    if isinstance(exc, DagsterUnavailable):
        return HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"The pipeline is unavailable: {exc}. Start Dagster (make run) and retry.",
            headers={"Retry-After": "5"},
        )
    return HTTPException(status.HTTP_502_BAD_GATEWAY, detail=f"The pipeline refused the request: {exc}")


def _webhook_tags(url: str | None, settings: GatewaySettings, store: BlobStore) -> Callable[[], dict[str, str]]:
    """Run tags that make the webhook dispatcher deliver the final state; the URL is checked now,
    before anything is stored, so a refused URL costs nothing. The returned function, called when
    the run is launched, keeps the full URL in the store and gives tags with a redacted one."""
    if url is None:
        return dict
    if not settings.webhook_secret:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, detail="webhookUrl: webhooks are off on this gateway (no WEBHOOK_SECRET set)"
        )
    try:
        check_webhook_url(url, settings.webhook_allow_private)
    except WebhookRefused as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    return lambda: store_webhook_url(store, url)


def _strokes(strokes: list[BrushStroke]) -> list[dict[str, Any]]:
    return [s.model_dump() for s in strokes]


def _launch(
    runs: DagsterRuns, job: str, request_id: str, run_config: dict[str, Any], new: bool, tags: dict[str, str]
) -> StartResponse:
    """Add the partition (for a new request) and launch; on failure leave nothing half-made.

    At most `MAX_PARALLEL_LAUNCHES` launches are in flight: more would only slow the webserver
    down for all of them. A launch that timed out may still have gone through, so before undoing
    anything we look for its run.
    """
    if not runs.launch_slots.acquire(timeout=runs.launch_wait_seconds):
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="The pipeline is busy starting other requests; retry shortly.",
            headers={"Retry-After": "5"},
        )
    launch_tag = uuid.uuid4().hex  # tells this launch's run from the partition's earlier ones
    try:
        if new:
            runs.add_partition(request_id)
        runs.launch(job, request_id, run_config, {**tags, LAUNCH_TAG: launch_tag})
    except DagsterError as exc:
        if _run_exists(runs, request_id, launch_tag):
            return StartResponse(workflowId=request_id, status="RUNNING")
        if new:
            runs.delete_partition(request_id)
        raise pipeline_unavailable(exc) from exc
    finally:
        runs.launch_slots.release()
    runs.forget(request_id)  # a poll right after a generate must see the new run
    return StartResponse(workflowId=request_id, status="RUNNING")


def _run_exists(runs: DagsterRuns, request_id: str, launch_tag: str) -> bool:
    try:
        run = runs.latest_run(request_id)
    except DagsterError:
        return False
    return run is not None and run.tags.get(LAUNCH_TAG) == launch_tag


def _new_request_id() -> str:
    return f"jewelry-gen-{uuid.uuid4()}"


def _idempotent(runs: DagsterRuns, caller: str, key: str | None, launch: Any) -> StartResponse:
    """Run `launch(tags)` once per (caller, Idempotency-Key); a retry gets the first workflow back.

    The key is stored as a run tag (hashed with the caller), so it survives gateway restarts; a
    lock per key covers the window between looking it up and the run appearing.
    """
    if key is None:
        return launch({OWNER_TAG: caller})
    if not _IDEMPOTENCY_KEY.match(key):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="Idempotency-Key: 1 to 200 printable characters")
    digest = hashlib.sha256(f"{caller}:{key}".encode()).hexdigest()[:32]
    with _idempotency_guard:
        lock = _idempotency_locks.setdefault(digest, threading.Lock())
    with lock:
        try:
            earlier = runs.newest_run_tagged({IDEMPOTENCY_TAG: digest})
        except DagsterError as exc:
            raise pipeline_unavailable(exc) from exc
        if earlier is not None:
            return StartResponse(
                workflowId=earlier.tags[PARTITION_TAG],
                status=position_of(earlier).status,
            )
        return launch({OWNER_TAG: caller, IDEMPOTENCY_TAG: digest})


def _start(
    job: str,
    body: StartRequest,
    runs: DagsterRuns,
    store: BlobStore,
    settings: SettingsDep,
    caller: str,
    idempotency_key: str | None,
) -> StartResponse:
    image = decode_base64_image(body.originalImageBase64, settings.max_image_bytes, settings.max_image_pixels)
    hook = _webhook_tags(body.webhookUrl, settings, store)
    if not runs.ping(timeout=None):
        # Checked before storing anything, so an outage leaves no orphaned upload behind.
        raise pipeline_unavailable(DagsterUnavailable("Dagster is not reachable"))
    return _idempotent(
        runs, caller, idempotency_key, lambda tags: _store_and_launch(job, body, image, runs, store, {**tags, **hook()})
    )


def _store_and_launch(
    job: str, body: StartRequest, image: bytes, runs: DagsterRuns, store: BlobStore, tags: dict[str, str]
) -> StartResponse:
    request_id = _new_request_id()
    upload_uri = store.put(f"requests/{request_id}/upload", image)
    ops: dict[str, Any] = {
        AssetName.ORIGINAL_IMAGE: {"config": {"image_uri": upload_uri}},
        AssetName.JEWELRY_MASK: {"config": {"points": [p.model_dump() for p in body.maskPoints]}},
    }
    if job == FULL_JOB:
        ops[AssetName.REFINED_MASK] = {"config": {"brush_strokes": _strokes(body.brushStrokes)}}
    try:
        return _launch(runs, job, request_id, {"ops": ops}, new=True, tags=tags)
    except HTTPException:
        store.delete(upload_uri)  # the request never started: keep no orphaned upload
        raise


@router.post("/start", response_model=StartResponse)
def start_workflow(
    body: StartRequest,
    runs: RunsDep,
    store: StoreDep,
    settings: SettingsDep,
    caller: CallerDep,
    idempotency_key: IdempotencyHeader = None,
) -> StartResponse:
    """Photo and clicks to generations: the whole pipeline."""
    return _start(FULL_JOB, body, runs, store, settings, caller, idempotency_key)


@router.post("/preprocess", response_model=StartResponse)
def preprocess_workflow(
    body: StartRequest,
    runs: RunsDep,
    store: StoreDep,
    settings: SettingsDep,
    caller: CallerDep,
    idempotency_key: IdempotencyHeader = None,
) -> StartResponse:
    """Upload, resize, background and mask; the result carries imageUri and maskUri for /generate."""
    return _start(PREPROCESS_JOB, body, runs, store, settings, caller, idempotency_key)


def _path_in_store(store: BlobStore, uri: str, field: str) -> str:
    try:
        path = store.path_of(uri)
    except BlobStoreError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"{field}: {exc}") from None
    if not store.exists_path(path):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{field}: nothing is stored at {uri}")
    return path


@router.post("/generate", response_model=StartResponse)
def generate_workflow(
    body: GenerateRequest,
    runs: RunsDep,
    store: StoreDep,
    settings: SettingsDep,
    caller: CallerDep,
    idempotency_key: IdempotencyHeader = None,
) -> StartResponse:
    """Refine a preprocessed mask with brush strokes and generate.

    URIs from one earlier preprocess run continue that request's partition (one lineage);
    any other pair of stored blobs starts a new request with them as inputs.
    """
    image_path = _path_in_store(store, body.imageUri, "imageUri")
    mask_path = _path_in_store(store, body.maskUri, "maskUri")
    hook = _webhook_tags(body.webhookUrl, settings, store)
    if not runs.ping(timeout=None):
        raise pipeline_unavailable(DagsterUnavailable("Dagster is not reachable"))
    image_match, mask_match = _OWN_ARTIFACT.match(image_path), _OWN_ARTIFACT.match(mask_path)
    strokes = {AssetName.REFINED_MASK: {"config": {"brush_strokes": _strokes(body.brushStrokes)}}}
    if (
        image_match
        and mask_match
        and image_match["rid"] == mask_match["rid"]
        and image_path == artifact_path(image_match["rid"], AssetName.BACKGROUND_REMOVED_IMAGE, "png")
        and mask_path == artifact_path(mask_match["rid"], AssetName.JEWELRY_MASK, "png")
    ):
        earlier = owned_run(runs, image_match["rid"], caller)  # 404 unless the caller owns it
        return _idempotent(
            runs,
            caller,
            idempotency_key,
            lambda tags: _launch(
                runs, GENERATE_JOB, earlier.tags[PARTITION_TAG], {"ops": strokes}, False, {**tags, **hook()}
            ),
        )
    for match in (image_match, mask_match):
        if match and caller != ANONYMOUS:
            owned_run(runs, match["rid"], caller)  # another caller's blobs are not ours to read
    ops = {
        AssetName.ORIGINAL_IMAGE: {"config": {"image_uri": body.imageUri}},
        AssetName.BACKGROUND_REMOVED_IMAGE: {"config": {"mode": "keep"}},
        AssetName.JEWELRY_MASK: {"config": {"mask_uri": body.maskUri}},
        **strokes,
    }
    return _idempotent(
        runs,
        caller,
        idempotency_key,
        lambda tags: _launch(runs, FULL_JOB, _new_request_id(), {"ops": ops}, True, {**tags, **hook()}),
    )


def owned_run(runs: DagsterRuns, workflow_id: str, caller: str, cached: bool = False) -> RunInfo:
    """The workflow's newest run; 404 when it does not exist or belongs to another caller.

    Shared by every route that reads one workflow, so ownership is checked in one place.
    """
    not_found = HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no workflow {workflow_id[:100]!r}")
    if not WORKFLOW_ID.match(workflow_id):
        raise not_found
    try:
        run = runs.latest_run_cached(workflow_id) if cached else runs.latest_run(workflow_id)
    except DagsterError as exc:
        raise pipeline_unavailable(exc) from exc
    # Runs started from the Dagster UI (reruns, re-generation) carry no owner: they inherit the
    # request's, which is on the request's first run.
    if run is None or (caller != ANONYMOUS and _owner(runs, run, workflow_id) != caller):
        raise not_found
    return run


def _owner(runs: DagsterRuns, run: RunInfo, workflow_id: str) -> str | None:
    if OWNER_TAG in run.tags:
        return run.tags[OWNER_TAG]
    try:
        first = runs.first_run_tagged({PARTITION_TAG: workflow_id})
    except DagsterError as exc:
        raise pipeline_unavailable(exc) from exc
    return first.tags.get(OWNER_TAG) if first else None


@router.get("/{workflow_id}", response_model=WorkflowState, response_model_exclude_none=True)
def get_workflow(workflow_id: str, runs: RunsDep, results: ResultsDep, caller: CallerDep) -> WorkflowState:
    """Status of the request's newest run; results once it completed."""
    run = owned_run(runs, workflow_id, caller, cached=True)
    try:
        return state_of(workflow_id, run, runs, results)
    except DagsterError as exc:
        raise pipeline_unavailable(exc) from exc


@router.post("/{workflow_id}/cancel", response_model=StartResponse)
def cancel_workflow(workflow_id: str, runs: RunsDep, caller: CallerDep) -> StartResponse:
    """Terminate the request's running run."""
    run = owned_run(runs, workflow_id, caller)
    state = position_of(run).status
    if state != "RUNNING":
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"workflow {workflow_id} already ended: {state}")
    try:
        runs.terminate(run.run_id)
    except DagsterError as exc:
        raise pipeline_unavailable(exc) from exc
    runs.forget(workflow_id)
    return StartResponse(workflowId=workflow_id, status="CANCELLED")
