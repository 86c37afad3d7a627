"""How a workflow begins: /start and /preprocess from a photo, /generate from stored artifacts."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status

from gateway.claims import release
from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError, DagsterUnavailable
from gateway.quotas import Quotas
from gateway.schemas import GenerateRequest, StartRequest, StartResponse
from gateway.settings import GatewaySettings
from gateway.starts import REACHABLE_SECONDS, StartLauncher
from gateway.status import position_of
from gateway.uploads import decode_base64_image
from gateway.workflows.errors import pipeline_unavailable
from gateway.workflows.idempotency import claim_or_unavailable, idempotent, stripe
from gateway.workflows.launch import (
    drop_strokes,
    drop_upload,
    drop_webhook_url,
    enqueue,
    launch,
    new_request_id,
    run_config,
    store_strokes,
    store_upload,
    webhook_tags,
)
from gateway.workflows.ownership import owned_run
from jewel_dagster.contract import FULL_JOB, GENERATE_JOB, IMAGE_ASSETS, AssetName
from jewel_dagster.resources.blob_store import BlobStore, BlobStoreError
from jewel_dagster.storage_layout import ARTIFACT_PNG_PATH, continue_claim


def start(
    job: str,
    body: StartRequest,
    runs: DagsterRuns,
    store: BlobStore,
    settings: GatewaySettings,
    launcher: StartLauncher,
    caller: str,
    idempotency_key: str | None,
    quotas: Quotas,
) -> StartResponse:
    """A new request from a photo and clicks: `job` is the whole pipeline or the preprocess."""
    image = decode_base64_image(body.originalImageBase64, settings.max_image_bytes, settings.max_image_pixels)
    hook = webhook_tags(body.webhookUrl, settings, store, caller, body.webhookEvents)
    # Checked before storing anything, so an outage leaves no orphaned upload behind. While this
    # gateway launches in the background, a recent answer of Dagster's to those launches is
    # enough: a ping would queue on the busy webserver behind them. Idle, it asks (cheap then).
    busy = settings.start_in_background and launcher.pending() > 0
    if not (runs.reachable(REACHABLE_SECONDS) if busy else runs.ping(timeout=None)):
        raise pipeline_unavailable(DagsterUnavailable("Dagster is not reachable"))
    request_id = new_request_id()

    def store_and_start(tags: dict[str, str]) -> StartResponse:
        quotas.refuse_over(caller, len(image))  # only a new workflow counts: not an idempotent replay
        upload_uri, ops = store_upload(job, body, image, store, request_id)
        tags = {**tags, **hook()}
        if settings.start_in_background:
            started = enqueue(job, store, launcher, request_id, upload_uri, ops, tags)
        else:
            try:
                started = launch(runs, job, request_id, run_config(ops), new=True, tags=tags)
            except HTTPException:
                drop_upload(store, upload_uri)  # the request never started: keep no orphaned upload
                drop_strokes(store, ops)
                drop_webhook_url(store, tags)
                raise
        quotas.count(caller, len(image))
        return started

    return idempotent(runs, store, caller, idempotency_key, body, job, request_id, store_and_start, launcher)


def _artifact_input(store: BlobStore, uri: str, field: str) -> tuple[str, str, str]:
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


def _newest_run_id(runs: DagsterRuns, workflow_id: str) -> str | None:
    try:
        run = runs.latest_run(workflow_id)
    except DagsterError:
        return None
    return run.run_id if run else None


def generate(
    body: GenerateRequest,
    runs: DagsterRuns,
    store: BlobStore,
    settings: GatewaySettings,
    caller: str,
    quotas: Quotas,
    idempotency_key: str | None,
    launcher: StartLauncher,
) -> StartResponse:
    """Refine a preprocessed mask with brush strokes and generate.

    The imageUri/maskUri of one earlier preprocess continue that request's partition (one
    lineage; 409 while a run of it is still going); any other pair of the caller's image
    artifacts starts a new request with them as inputs.
    """
    hook = webhook_tags(body.webhookUrl, settings, store, caller, body.webhookEvents)
    image = _artifact_input(store, body.imageUri, "imageUri")
    mask = _artifact_input(store, body.maskUri, "maskUri")
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
        ops = {**ops, AssetName.REFINED_MASK: {"config": store_strokes(store, request_id, body.brushStrokes, space)}}
        tags = {**tags, **hook()}
        try:
            started = launch(runs, job, request_id, run_config(ops), new, tags)
        except HTTPException:
            drop_strokes(store, ops)
            drop_webhook_url(store, tags)
            raise
        quotas.count(caller, 0)
        return started

    if (image_rid, image_name, mask_name) == (mask_rid, AssetName.BACKGROUND_REMOVED_IMAGE, AssetName.JEWELRY_MASK):

        def continue_request(tags: dict[str, str]) -> StartResponse:
            with stripe(f"request:{image_rid}"):  # two generates at once: one launches, one gets 409
                latest = owned_run(runs, image_rid, caller)
                if position_of(latest).status == "RUNNING":
                    raise HTTPException(
                        status.HTTP_409_CONFLICT,
                        detail=f"workflow {image_rid} is still running; wait for it to end or cancel it",
                    )
                # Across replicas: one launch continues a given run; a concurrent one on another
                # gateway finds the claim and gets the same 409.
                held = claim_or_unavailable(
                    store,
                    continue_claim(latest.run_id),
                    settled=lambda held: _newest_run_id(runs, image_rid) != latest.run_id,
                    presence=launcher,
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

        return idempotent(
            runs, store, caller, idempotency_key, body, GENERATE_JOB, image_rid, continue_request, launcher
        )
    ops = {
        AssetName.ORIGINAL_IMAGE: {"config": {"image_uri": body.imageUri}},
        AssetName.BACKGROUND_REMOVED_IMAGE: {"config": {"mode": "keep"}},
        AssetName.JEWELRY_MASK: {"config": {"mask_uri": body.maskUri}},
    }
    request_id = new_request_id()
    return idempotent(
        runs,
        store,
        caller,
        idempotency_key,
        body,
        FULL_JOB,
        request_id,
        lambda tags: launch_with_strokes(FULL_JOB, request_id, ops, True, tags),
        launcher,
    )
