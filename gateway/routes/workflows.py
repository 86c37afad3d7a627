"""The seed's /workflow endpoints on top of Dagster runs of the request's partition."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Response, status
from pydantic import BaseModel

from gateway.cancels import await_stop
from gateway.claims import Claim, ClaimError, claim, release
from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError, DagsterUnavailable, public_message
from gateway.dagster_api.models import RunInfo
from gateway.deps import LauncherDep, QuotasDep, ResultsDep, RunsDep, SettingsDep, StoreDep
from gateway.json_route import OffLoopJSONRoute
from gateway.observability import logs
from gateway.quotas import Quotas
from gateway.schemas import (
    ONE_WORKFLOW,
    STARTS,
    GenerateRequest,
    StartRequest,
    StartResponse,
    WorkflowState,
    error_responses,
)
from gateway.security import ANONYMOUS, CallerDep
from gateway.settings import GatewaySettings
from gateway.starts import (
    REACHABLE_SECONDS,
    PendingStart,
    StartLauncher,
    forget_start,
    mark_cancelled,
    read_start,
    state_of_start,
    write_start,
)
from gateway.status import position_of, workflow_status
from gateway.uploads import decode_base64_image
from gateway.webhooks import WebhookRefused, check_webhook_url, store_webhook_url
from gateway.workflow_state import state_of
from jewel_dagster import tracing
from jewel_dagster.contract import (
    FULL_JOB,
    GENERATE_JOB,
    IDEMPOTENCY_REQUEST_TAG,
    IDEMPOTENCY_TAG,
    IMAGE_ASSETS,
    LAUNCH_TAG,
    OWNER_TAG,
    PARTITION_TAG,
    PREPROCESS_JOB,
    REQUEST_ID_TAG,
    WEBHOOK_KEY_TAG,
    AssetName,
    run_config_ops,
)
from jewel_dagster.request_inputs import BRUSH_STROKES, BrushStroke
from jewel_dagster.resources.blob_store import BlobStore, BlobStoreError
from jewel_dagster.storage_layout import (
    ARTIFACT_PNG_PATH,
    continue_claim,
    idempotency_claim,
    strokes_path,
    tombstone_path,
    upload_path,
    webhook_url_path,
)

router = APIRouter(prefix="/workflow", tags=["workflow"], route_class=OffLoopJSONRoute)

# Matched with fullmatch: `$` would let a trailing newline through.
WORKFLOW_ID = re.compile(r"jewelry-gen-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
# Striped locks: a fixed table, however many keys and requests pass through (a dict of one lock
# per key grew forever). Two keys sharing a stripe only wait for each other.
_LOCK_STRIPES = [threading.Lock() for _ in range(256)]
log = logging.getLogger("gateway.workflows")


def _stripe(key: str) -> threading.Lock:
    return _LOCK_STRIPES[int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % len(_LOCK_STRIPES)]


# Documented, not validated by FastAPI: an id of another shape is 404 (no such workflow), not 422.
WorkflowIdPath = Annotated[
    str,
    Path(
        description="`jewelry-gen-<uuid>`, as /workflow/start answered; any other id is 404.",
        json_schema_extra={"pattern": WORKFLOW_ID.pattern},
    ),
]

IdempotencyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="Retry-safe starts: the same key returns the same workflow."),
]


def pipeline_unavailable(exc: DagsterError) -> HTTPException:
    """A generic answer with an error id; what Dagster said (addresses included) goes to the log."""
    detail = public_message(exc, log)
    if isinstance(exc, DagsterUnavailable):
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=detail, headers={"Retry-After": "5"})
    return HTTPException(status.HTTP_502_BAD_GATEWAY, detail=detail)


def _webhook_tags(
    url: str | None, settings: GatewaySettings, store: BlobStore, caller: str
) -> Callable[[], dict[str, str]]:
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
        check_webhook_url(url, settings.webhook_allow_private, caller)  # its host looked up among the caller's
    except WebhookRefused as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    return lambda: store_webhook_url(store, url)


def _strokes(
    store: BlobStore, request_id: str, strokes: list[BrushStroke], points_space: str = "photo"
) -> dict[str, Any]:
    """The `refined_mask` config: the validated strokes stored as a JSON blob, only its URI in run
    config (run config lives in Dagster's event log); no strokes, no blob. `points_space` says
    what the points are normalised on: the uploaded photo, or the canvas image (imageUri)."""
    if not strokes:
        return {}
    data = BRUSH_STROKES.dump_json(strokes)
    uri = store.put(strokes_path(request_id, uuid.uuid4().hex), data, "application/json")
    return {"strokes_uri": uri} if points_space == "photo" else {"strokes_uri": uri, "points_space": points_space}


def _drop_strokes(store: BlobStore, ops: dict[Any, Any]) -> None:
    """Delete the strokes blob of a launch that did not happen."""
    uri = ops.get(AssetName.REFINED_MASK, {}).get("config", {}).get("strokes_uri")
    if uri:
        store.delete(uri)


def _drop_webhook_url(store: BlobStore, tags: dict[str, str]) -> None:
    """Delete the stored webhook URL (it may hold credentials) of a launch that did not happen."""
    if key := tags.get(WEBHOOK_KEY_TAG):
        store.delete_path(webhook_url_path(key))


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
    logs.bind(workflowId=request_id)
    correlation = {REQUEST_ID_TAG: rid} if (rid := logs.current_request_id()) else {}
    start_span = tracing.tracer().start_as_current_span(
        f"start {job}", attributes=tracing.span_attributes(request_id, None, **{"dagster.job": job})
    )
    try:
        with start_span:
            if new:
                runs.add_partition(request_id)
            run_tags = {**tags, **correlation, **tracing.traceparent_tags(), LAUNCH_TAG: launch_tag}
            run_id = runs.launch(job, request_id, run_config, run_tags)
    except DagsterError as exc:
        if _run_exists(runs, request_id, launch_tag):
            return StartResponse(workflowId=request_id, status="RUNNING")
        if new:
            runs.delete_partition(request_id)
        raise pipeline_unavailable(exc) from exc
    finally:
        runs.launch_slots.release()
    logs.bind(runId=run_id)
    log.info("launched %s", job, extra=logs.fields(job=job))
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


# A claimed Idempotency-Key whose run never appeared (its gateway died mid-launch) is taken over
# after this long: above a launch's worst case (a 30 s wait for a launch slot, then GraphQL calls
# of up to 30 s each, retried once).
IDEMPOTENCY_CLAIM_STALE_SECONDS = 300.0


def _idempotent(
    runs: DagsterRuns,
    store: BlobStore,
    caller: str,
    key: str | None,
    request: BaseModel,
    endpoint: str,
    request_id: str,
    launch: Callable[[dict[str, str]], StartResponse],
) -> StartResponse:
    """Run `launch(tags)` once per (caller, Idempotency-Key); a retry gets the first workflow back,
    whichever gateway replica it reaches.

    The key (hashed with the caller) is claimed in the shared blob store (gateway/claims.py) with
    the workflow id this launch will use and a digest of the endpoint and body: the first replica
    to claim it launches, any other answers that workflow id (RUNNING) even before its run exists.
    The same key with another request is a client bug, answered 422 rather than with a workflow
    that is not the one asked for. The key also rides on the run as a tag, so keys used before
    claims existed are still found.
    """
    if key is None:
        return launch({OWNER_TAG: caller})
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="Idempotency-Key: 1 to 200 printable characters")
    digest = hashlib.sha256(f"{caller}:{key}".encode()).hexdigest()[:32]
    asked = hashlib.sha256(f"{endpoint}\n{request.model_dump_json()}".encode()).hexdigest()[:32]

    def reused() -> HTTPException:
        return HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            detail="Idempotency-Key was already used with a different request; use a new key",
        )

    with _stripe(digest):  # in-process: the replica's own retries wait here instead of racing below
        try:
            earlier = runs.newest_run_tagged({IDEMPOTENCY_TAG: digest})
        except DagsterError as exc:
            raise pipeline_unavailable(exc) from exc
        if earlier is not None:
            if earlier.tags.get(IDEMPOTENCY_REQUEST_TAG, asked) != asked:
                raise reused()
            return StartResponse(workflowId=earlier.tags[PARTITION_TAG], status=position_of(earlier).status)
        try:
            held = claim(
                store,
                idempotency_claim(digest),
                {"workflowId": request_id, "asked": asked},
                IDEMPOTENCY_CLAIM_STALE_SECONDS,
                settled=lambda held: _has_run(runs, store, str(held.get("workflowId", ""))),
            )
        except (BlobStoreError, ClaimError) as exc:
            raise pipeline_unavailable(DagsterUnavailable(f"idempotency claim: {exc}")) from exc
        if not held.won:
            if held.data.get("asked") != asked:
                raise reused()
            workflow_id = str(held.data["workflowId"])
            start = read_start(store, workflow_id)  # launched in the background: not a run yet
            return StartResponse(workflowId=workflow_id, status=state_of_start(start).status if start else "RUNNING")
        try:
            return launch({OWNER_TAG: caller, IDEMPOTENCY_TAG: digest, IDEMPOTENCY_REQUEST_TAG: asked})
        except BaseException:
            release(store, held)  # nothing launched: a retry with this key may try again
            raise


def _claim_or_unavailable(store: BlobStore, name: str, settled: Callable[[dict[str, Any]], bool]) -> Claim:
    try:
        return claim(store, name, {}, IDEMPOTENCY_CLAIM_STALE_SECONDS, settled)
    except (BlobStoreError, ClaimError) as exc:
        raise pipeline_unavailable(DagsterUnavailable(f"claim {name}: {exc}")) from exc


def _newest_run_id(runs: DagsterRuns, workflow_id: str) -> str | None:
    try:
        run = runs.latest_run(workflow_id)
    except DagsterError:
        return None
    return run.run_id if run else None


def _has_run(runs: DagsterRuns, store: BlobStore, workflow_id: str) -> bool:
    """Whether the workflow has a run, or a pending start (the run to come, or a start that
    ended without one); an unanswered question counts as yes (never launch twice)."""
    try:
        return read_start(store, workflow_id) is not None or runs.latest_run(workflow_id) is not None
    except (DagsterError, BlobStoreError):
        return True


def _start(
    job: str,
    body: StartRequest,
    runs: DagsterRuns,
    store: BlobStore,
    settings: SettingsDep,
    launcher: StartLauncher,
    caller: str,
    idempotency_key: str | None,
    quotas: Quotas,
) -> StartResponse:
    image = decode_base64_image(body.originalImageBase64, settings.max_image_bytes, settings.max_image_pixels)
    hook = _webhook_tags(body.webhookUrl, settings, store, caller)
    # Checked before storing anything, so an outage leaves no orphaned upload behind. While this
    # gateway launches in the background, a recent answer of Dagster's to those launches is
    # enough: a ping would queue on the busy webserver behind them. Idle, it asks (cheap then).
    busy = settings.start_in_background and launcher.pending() > 0
    if not (runs.reachable(REACHABLE_SECONDS) if busy else runs.ping(timeout=None)):
        raise pipeline_unavailable(DagsterUnavailable("Dagster is not reachable"))
    request_id = _new_request_id()

    def store_and_start(tags: dict[str, str]) -> StartResponse:
        quotas.refuse_over(caller, len(image))  # only a new workflow counts: not an idempotent replay
        upload_uri, ops = _store_upload(job, body, image, store, request_id)
        tags = {**tags, **hook()}
        if settings.start_in_background:
            started = _enqueue(job, store, launcher, request_id, upload_uri, ops, tags)
        else:
            try:
                started = _launch(runs, job, request_id, _run_config(ops), new=True, tags=tags)
            except HTTPException:
                store.delete(upload_uri)  # the request never started: keep no orphaned upload
                _drop_strokes(store, ops)
                _drop_webhook_url(store, tags)
                raise
        quotas.count(caller, len(image))
        return started

    return _idempotent(runs, store, caller, idempotency_key, body, job, request_id, store_and_start)


def _run_config(ops: dict[str, Any]) -> dict[str, Any]:
    """The run config of a launch: `ops` names each asset's input section ({asset: {"config": ...}});
    the pipeline's steps take them grouped by step (`contract.run_config_ops`)."""
    return {"ops": run_config_ops({section: entry["config"] for section, entry in ops.items()})}


def _store_upload(
    job: str, body: StartRequest, image: bytes, store: BlobStore, request_id: str
) -> tuple[str, dict[str, Any]]:
    """The upload (and strokes) stored; their URI and the run config's ops."""
    upload_uri = store.put(upload_path(request_id), image)
    ops: dict[str, Any] = {
        AssetName.ORIGINAL_IMAGE: {"config": {"image_uri": upload_uri}},
        AssetName.JEWELRY_MASK: {"config": {"points": [p.model_dump() for p in body.maskPoints]}},
    }
    if job == FULL_JOB:
        ops[AssetName.REFINED_MASK] = {"config": _strokes(store, request_id, body.brushStrokes)}
    return upload_uri, ops


def _enqueue(
    job: str,
    store: BlobStore,
    launcher: StartLauncher,
    request_id: str,
    upload_uri: str,
    ops: dict[str, Any],
    tags: dict[str, str],
) -> StartResponse:
    """START_IN_BACKGROUND: store the pending start and hand it to this gateway's launcher
    (gateway/starts.py), which adds the partition and launches; the caller gets RUNNING now."""
    logs.bind(workflowId=request_id)
    correlation = {REQUEST_ID_TAG: rid} if (rid := logs.current_request_id()) else {}
    blobs = [upload_uri]
    if strokes_uri := ops.get(AssetName.REFINED_MASK, {}).get("config", {}).get("strokes_uri"):
        blobs.append(strokes_uri)
    if webhook_key := tags.get(WEBHOOK_KEY_TAG):
        blobs.append(store.uri_for(webhook_url_path(webhook_key)))
    start_span = tracing.tracer().start_as_current_span(
        f"start {job}", attributes=tracing.span_attributes(request_id, None, **{"dagster.job": job})
    )
    with start_span:  # the run's spans become children of this one through the traceparent tag
        run_tags = {**tags, **correlation, **tracing.traceparent_tags(), LAUNCH_TAG: uuid.uuid4().hex}
        pending = PendingStart(
            workflowId=request_id,
            owner=tags[OWNER_TAG],
            job=job,
            runConfig=_run_config(ops),
            tags=run_tags,
            gateway=launcher.gateway_id,
            blobs=blobs,
        )
        try:
            write_start(store, pending)
        except BlobStoreError as exc:
            for uri in blobs:
                store.delete(uri)
            raise pipeline_unavailable(DagsterUnavailable(f"pending start not stored: {exc}")) from exc
    launcher.submit(request_id)
    log.info("queued %s", job, extra=logs.fields(job=job))
    return StartResponse(workflowId=request_id, status="RUNNING")


@router.post("/start", response_model=StartResponse, responses=error_responses(*STARTS))
def start_workflow(
    body: StartRequest,
    runs: RunsDep,
    store: StoreDep,
    settings: SettingsDep,
    launcher: LauncherDep,
    caller: CallerDep,
    quotas: QuotasDep,
    idempotency_key: IdempotencyHeader = None,
) -> StartResponse:
    """Photo and clicks to generations: the whole pipeline."""
    return _start(FULL_JOB, body, runs, store, settings, launcher, caller, idempotency_key, quotas)


@router.post("/preprocess", response_model=StartResponse, responses=error_responses(*STARTS))
def preprocess_workflow(
    body: StartRequest,
    runs: RunsDep,
    store: StoreDep,
    settings: SettingsDep,
    launcher: LauncherDep,
    caller: CallerDep,
    quotas: QuotasDep,
    idempotency_key: IdempotencyHeader = None,
) -> StartResponse:
    """Upload, resize, background and mask; the result carries imageUri and maskUri for /generate."""
    return _start(PREPROCESS_JOB, body, runs, store, settings, launcher, caller, idempotency_key, quotas)


def _artifact_path(store: BlobStore, uri: str, field: str) -> tuple[str, str, str]:
    """(path, request id, asset name) of an image artifact URI this API hands out; 400 otherwise.

    Only the PNG artifacts of a request are inputs: not its upload, not any other path.
    """
    try:
        path = store.path_of(uri)
    except BlobStoreError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"{field}: {exc}") from None
    match = ARTIFACT_PNG_PATH.fullmatch(path)
    if match is None or match["name"] not in IMAGE_ASSETS:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"{field}: not an image artifact of this API; pass the imageUri/maskUri a preprocess returned",
        )
    return path, match["rid"], match["name"]


def _owned_artifact(
    runs: DagsterRuns, store: BlobStore, artifact: tuple[str, str, str], field: str, caller: str
) -> None:
    """404 unless the artifact's request is the caller's, then unless the blob exists: the owner
    is checked first, so another caller's request answers like an unknown one whatever is stored."""
    path, request_id, _ = artifact
    owned_run(runs, request_id, caller)
    if not store.exists_path(path):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{field}: nothing is stored there")


@router.post("/generate", response_model=StartResponse, responses=error_responses(*STARTS, 409))
def generate_workflow(
    body: GenerateRequest,
    runs: RunsDep,
    store: StoreDep,
    settings: SettingsDep,
    caller: CallerDep,
    quotas: QuotasDep,
    idempotency_key: IdempotencyHeader = None,
) -> StartResponse:
    """Refine a preprocessed mask with brush strokes and generate.

    The imageUri/maskUri of one earlier preprocess continue that request's partition (one
    lineage; 409 while a run of it is still going); any other pair of the caller's image
    artifacts starts a new request with them as inputs.
    """
    hook = _webhook_tags(body.webhookUrl, settings, store, caller)
    image = _artifact_path(store, body.imageUri, "imageUri")
    mask = _artifact_path(store, body.maskUri, "maskUri")
    _owned_artifact(runs, store, image, "imageUri", caller)
    _owned_artifact(runs, store, mask, "maskUri", caller)
    (_, image_rid, image_name), (_, mask_rid, mask_name) = image, mask

    def launch_with_strokes(
        job: str, request_id: str, ops: dict[Any, Any], new: bool, tags: dict[str, str]
    ) -> StartResponse:
        # Stroke points are normalised on the image at imageUri: the canvas when continuing a
        # preprocessed request; on a new request that image is the request's photo.
        space = "photo" if new else "canvas"
        quotas.refuse_over(caller, 0)  # a generate stores no photo: it counts as a workflow
        ops = {**ops, AssetName.REFINED_MASK: {"config": _strokes(store, request_id, body.brushStrokes, space)}}
        tags = {**tags, **hook()}
        try:
            started = _launch(runs, job, request_id, _run_config(ops), new, tags)
        except HTTPException:
            _drop_strokes(store, ops)
            _drop_webhook_url(store, tags)
            raise
        quotas.count(caller, 0)
        return started

    if (image_rid, image_name, mask_name) == (mask_rid, AssetName.BACKGROUND_REMOVED_IMAGE, AssetName.JEWELRY_MASK):

        def continue_request(tags: dict[str, str]) -> StartResponse:
            with _stripe(f"request:{image_rid}"):  # two generates at once: one launches, one gets 409
                latest = owned_run(runs, image_rid, caller)
                if position_of(latest).status == "RUNNING":
                    raise HTTPException(
                        status.HTTP_409_CONFLICT,
                        detail=f"workflow {image_rid} is still running; wait for it to end or cancel it",
                    )
                # Across replicas: one launch continues a given run; a concurrent one on another
                # gateway finds the claim and gets the same 409.
                held = _claim_or_unavailable(
                    store,
                    continue_claim(latest.run_id),
                    settled=lambda held: _newest_run_id(runs, image_rid) != latest.run_id,
                )
                if not held.won:
                    raise HTTPException(
                        status.HTTP_409_CONFLICT,
                        detail=f"workflow {image_rid} is still running; wait for it to end or cancel it",
                    )
                try:
                    return launch_with_strokes(GENERATE_JOB, image_rid, {}, False, tags)
                except BaseException:
                    release(store, held)
                    raise

        return _idempotent(runs, store, caller, idempotency_key, body, GENERATE_JOB, image_rid, continue_request)
    ops = {
        AssetName.ORIGINAL_IMAGE: {"config": {"image_uri": body.imageUri}},
        AssetName.BACKGROUND_REMOVED_IMAGE: {"config": {"mode": "keep"}},
        AssetName.JEWELRY_MASK: {"config": {"mask_uri": body.maskUri}},
    }
    request_id = _new_request_id()
    return _idempotent(
        runs,
        store,
        caller,
        idempotency_key,
        body,
        FULL_JOB,
        request_id,
        lambda tags: launch_with_strokes(FULL_JOB, request_id, ops, True, tags),
    )


def owned_run(runs: DagsterRuns, workflow_id: str, caller: str, cached: bool = False) -> RunInfo:
    """The workflow's newest run; 404 when it does not exist or belongs to another caller.

    Shared by every route that reads one workflow, so ownership is checked in one place.
    """
    try:
        run = _owned_run(runs, workflow_id, caller, cached)
    except DagsterError as exc:
        raise pipeline_unavailable(exc) from exc
    if run is None:
        raise _not_found(workflow_id)
    return run


def _not_found(workflow_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no workflow {workflow_id[:100]!r}")


def _owned_run(runs: DagsterRuns, workflow_id: str, caller: str, cached: bool) -> RunInfo | None:
    """The caller's newest run of the workflow, None if there is none; DagsterError if Dagster
    cannot tell."""
    if not WORKFLOW_ID.fullmatch(workflow_id):
        return None
    run = runs.latest_run_cached(workflow_id) if cached else runs.latest_run(workflow_id)
    # Runs started from the Dagster UI (reruns, re-generation) carry no owner: they inherit the
    # request's, which is on the request's first run.
    if run is None or (caller != ANONYMOUS and _owner(runs, run, workflow_id) != caller):
        return None
    return run


def owned_run_or_start(
    runs: DagsterRuns, store: BlobStore, workflow_id: str, caller: str, cached: bool = False
) -> RunInfo | PendingStart:
    """`owned_run`, or the workflow's pending start when Dagster knows no run of it (started in
    the background, its run not launched yet, or a start that ended without one) or cannot be
    asked; 404 as `owned_run` when neither is the caller's. A live workflow costs nothing more."""
    if not WORKFLOW_ID.fullmatch(workflow_id):
        raise _not_found(workflow_id)
    unanswered: DagsterError | None = None
    try:
        run = _owned_run(runs, workflow_id, caller, cached)
    except DagsterError as exc:
        run, unanswered = None, exc
    if run is not None:
        return run
    start = read_start(store, workflow_id)
    if start is not None and (caller == ANONYMOUS or start.owner == caller):
        return start  # (another caller's start answers like an unknown workflow)
    if unanswered is not None:
        raise pipeline_unavailable(unanswered) from unanswered
    # The launcher deletes the record once the run exists: it may have appeared meanwhile.
    return owned_run(runs, workflow_id, caller)


def _owner(runs: DagsterRuns, run: RunInfo, workflow_id: str) -> str | None:
    if OWNER_TAG in run.tags:
        return run.tags[OWNER_TAG]
    first = runs.first_run_tagged({PARTITION_TAG: workflow_id})
    return first.tags.get(OWNER_TAG) if first else None


def _removed(store: BlobStore, workflow_id: str, caller: str) -> HTTPException | None:
    """410 when the retention job removed this workflow (its tombstone is the caller's), else None.

    Asked only once Dagster knows no run of the id, so a GET of a live workflow costs nothing more.
    Tombstones expire (RETENTION_TOMBSTONE_DAYS): then the id answers 404 like one never seen.
    """
    try:
        tombstone = json.loads(store.get_path(tombstone_path(workflow_id)))
    except (BlobStoreError, ValueError):
        return None
    if caller != ANONYMOUS and tombstone.get("owner") != caller:
        return None  # another caller's request answers like an unknown one
    removed_at = str(tombstone.get("removedAt", ""))[:10]
    return HTTPException(
        status.HTTP_410_GONE,
        detail=f"workflow {workflow_id} was removed on {removed_at} with its images: results are kept for a "
        "limited time; start a new workflow",
    )


@router.get(
    "/{workflow_id}",
    response_model=WorkflowState,
    response_model_exclude_none=True,
    responses=error_responses(*ONE_WORKFLOW, 410),
)
def get_workflow(
    workflow_id: WorkflowIdPath, runs: RunsDep, results: ResultsDep, store: StoreDep, caller: CallerDep
) -> WorkflowState:
    """Status of the request's newest run; results once it completed; 410 once retention removed it."""
    try:
        run = owned_run_or_start(runs, store, workflow_id, caller, cached=True)
    except HTTPException as exc:
        gone = _removed(store, workflow_id, caller) if exc.status_code == status.HTTP_404_NOT_FOUND else None
        if gone is not None:
            raise gone from None
        raise
    if isinstance(run, PendingStart):
        return state_of_start(run)
    try:
        return state_of(workflow_id, run, runs, results)
    except DagsterError as exc:
        raise pipeline_unavailable(exc) from exc


@router.post(
    "/{workflow_id}/cancel",
    response_model=StartResponse,
    responses={
        **error_responses(*ONE_WORKFLOW, 409),
        202: {"model": StartResponse, "description": "The run is still stopping: status RUNNING, poll GET"},
    },
)
def cancel_workflow(
    workflow_id: WorkflowIdPath,
    runs: RunsDep,
    store: StoreDep,
    settings: SettingsDep,
    caller: CallerDep,
    response: Response,
) -> StartResponse:
    """Terminate the request's running run, or cancel its start before the run exists.

    CANCELLED only once Dagster says the run stopped (it waits up to CANCEL_WAIT_SECONDS): a run
    asked to stop can still finish, and the API must not have said CANCELLED first. A run that
    ended meanwhile (also between the look and the terminate, which Dagster then refuses) answers
    409 with its final state; one still stopping at the deadline answers 202 and RUNNING.
    """
    run = owned_run_or_start(runs, store, workflow_id, caller)
    if isinstance(run, PendingStart):
        return _cancel_start(runs, store, settings, run, response)
    state = position_of(run).status
    if state != "RUNNING":
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"workflow {workflow_id} already ended: {state}")
    if run.status != "CANCELING":  # asked before: wait for it again
        _terminate(runs, settings, workflow_id, run.run_id, caller)
    return _settled_cancel(runs, settings, workflow_id, run.run_id, response)


def _terminate(runs: DagsterRuns, settings: GatewaySettings, workflow_id: str, run_id: str, caller: str) -> None:
    """Ask Dagster to terminate the run. A run created a moment ago (NOT_STARTED, while the
    launcher submits it) is refused by Dagster's terminate: asked again until CANCEL_WAIT_SECONDS,
    as long as the run still runs; one that ended meanwhile is a 409."""
    deadline = time.monotonic() + settings.cancel_wait_seconds
    while True:
        try:
            runs.terminate(run_id)
            return
        except DagsterError as exc:
            runs.forget(workflow_id)
            now = position_of(owned_run(runs, workflow_id, caller)).status
            if now != "RUNNING" and not isinstance(exc, DagsterUnavailable):
                raise HTTPException(
                    status.HTTP_409_CONFLICT, detail=f"workflow {workflow_id} already ended: {now}"
                ) from None
            if isinstance(exc, DagsterUnavailable) or time.monotonic() >= deadline:
                raise pipeline_unavailable(exc) from exc
            time.sleep(0.1)


def _settled_cancel(
    runs: DagsterRuns, settings: GatewaySettings, workflow_id: str, run_id: str, response: Response
) -> StartResponse:
    """The answer to a cancel once Dagster was asked to terminate `run_id` (see cancel_workflow)."""
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
        response.status_code = status.HTTP_202_ACCEPTED
        return StartResponse(workflowId=workflow_id, status="RUNNING")
    return StartResponse(workflowId=workflow_id, status="CANCELLED")


def _cancel_start(
    runs: DagsterRuns, store: BlobStore, settings: GatewaySettings, start: PendingStart, response: Response
) -> StartResponse:
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
                return _settled_cancel(runs, settings, workflow_id, run.run_id, response)
    runs.forget(workflow_id)
    return StartResponse(workflowId=workflow_id, status="CANCELLED")
