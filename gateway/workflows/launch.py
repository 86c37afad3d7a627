"""One launch of a workflow's run: its partition, tags and blobs, or its start queued.

What a launch stores besides run config (the upload, the strokes, the webhook URL) is removed
again when the launch does not happen, so a refused start leaves nothing behind.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, status

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError, DagsterUnavailable
from gateway.observability import logs
from gateway.schemas import StartRequest, StartResponse
from gateway.settings import GatewaySettings
from gateway.starts import PendingStart, StartLauncher, write_start
from gateway.webhook_outbox.events import event_tags
from gateway.webhooks import WebhookRefused, check_webhook_url, store_webhook_url
from gateway.workflows.errors import pipeline_unavailable
from jewel_dagster import tracing
from jewel_dagster.contract import (
    FULL_JOB,
    LAUNCH_TAG,
    OWNER_TAG,
    REQUEST_ID_TAG,
    WEBHOOK_KEY_TAG,
    AssetName,
    run_config_ops,
)
from jewel_dagster.request_inputs import BRUSH_STROKES, BrushStroke
from jewel_dagster.resources.blob_store import BlobStore, BlobStoreError
from jewel_dagster.storage_layout import strokes_path, upload_path, webhook_url_path

log = logging.getLogger("gateway.workflows")


def new_request_id() -> str:
    return f"jewelry-gen-{uuid.uuid4()}"


def webhook_tags(
    url: str | None, settings: GatewaySettings, store: BlobStore, caller: str, events: list[str] | None = None
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
    return lambda: {**store_webhook_url(store, url), **event_tags(events)}  # events: none for the default


def store_strokes(
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


def drop_strokes(store: BlobStore, ops: dict[Any, Any]) -> None:
    """Delete the strokes blob of a launch that did not happen."""
    uri = ops.get(AssetName.REFINED_MASK, {}).get("config", {}).get("strokes_uri")
    if uri:
        store.delete(uri)


def drop_webhook_url(store: BlobStore, tags: dict[str, str]) -> None:
    """Delete the stored webhook URL (it may hold credentials) of a launch that did not happen."""
    if key := tags.get(WEBHOOK_KEY_TAG):
        store.delete_path(webhook_url_path(key))


def drop_upload(store: BlobStore, upload_uri: str) -> None:
    """Delete the upload of a request that never started: keep no orphaned upload."""
    store.delete(upload_uri)


def run_config(ops: dict[str, Any]) -> dict[str, Any]:
    """The run config of a launch: `ops` names each asset's input section ({asset: {"config": ...}});
    the pipeline's steps take them grouped by step (`contract.run_config_ops`)."""
    return {"ops": run_config_ops({section: entry["config"] for section, entry in ops.items()})}


def store_upload(
    job: str, body: StartRequest, image: bytes, store: BlobStore, request_id: str
) -> tuple[str, dict[str, Any]]:
    """The upload (and strokes) stored; their URI and the run config's ops."""
    upload_uri = store.put(upload_path(request_id), image)
    ops: dict[str, Any] = {
        AssetName.ORIGINAL_IMAGE: {"config": {"image_uri": upload_uri}},
        AssetName.JEWELRY_MASK: {"config": {"points": [p.model_dump() for p in body.maskPoints]}},
    }
    if job == FULL_JOB:
        ops[AssetName.REFINED_MASK] = {"config": store_strokes(store, request_id, body.brushStrokes)}
    return upload_uri, ops


def launch(
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


def enqueue(
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
            runConfig=run_config(ops),
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
