"""A request's stored artifacts over HTTP: GET /workflow/{id}/artifacts/{name}.

The web page draws the mask over the canvas image and offers the generations for download;
blob URIs (local:// or a private Azure container) are not something a browser can fetch.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from starlette.concurrency import run_in_threadpool

from gateway.dagster_api.errors import DagsterError
from gateway.deps import RunsDep, StoreDep
from gateway.routes.workflows import WorkflowIdPath, owned_run, pipeline_unavailable
from gateway.schemas import ONE_WORKFLOW, error_responses
from gateway.security import CallerDep
from jewel_dagster.contract import IMAGE_ASSETS, JSON_ASSETS
from jewel_dagster.resources.blob_store import BlobNotFoundError
from jewel_dagster.storage_layout import artifact_path

router = APIRouter(prefix="/workflow", tags=["artifacts"])

_MEDIA_TYPES = {"png": "image/png", "json": "application/json"}
RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _split(name: str) -> tuple[str, str]:
    stem, _, extension = name.rpartition(".")
    allowed = IMAGE_ASSETS if extension == "png" else JSON_ASSETS if extension == "json" else frozenset()
    if stem not in allowed:
        names = sorted([f"{n}.png" for n in IMAGE_ASSETS] + [f"{n}.json" for n in JSON_ASSETS])
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no artifact {name[:80]!r}; one of {', '.join(names)}")
    return stem, extension


@router.get(
    "/{workflow_id}/artifacts/{name}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "application/json": {}}}, **error_responses(*ONE_WORKFLOW)},
)
async def get_artifact(
    workflow_id: WorkflowIdPath,
    name: str,
    runs: RunsDep,
    store: StoreDep,
    caller: CallerDep,
    run_id: Annotated[
        str | None, Query(alias="runId", description="A run of this request: the value that run stored.")
    ] = None,
) -> Response:
    """The newest stored value of one asset of the request (or the one a given run stored), as PNG
    (images, masks) or JSON."""
    stem, extension = _split(name)
    await run_in_threadpool(owned_run, runs, workflow_id, caller, True)
    not_produced = HTTPException(
        status.HTTP_404_NOT_FOUND,
        detail=f"{name} has not been produced for {workflow_id}" + (f" by run {run_id[:40]}" if run_id else " (yet)"),
    )
    if run_id is not None:
        if not RUN_ID.fullmatch(run_id):
            raise not_produced
        path = artifact_path(workflow_id, stem, extension, run_id)
    else:
        try:
            located = await run_in_threadpool(runs.artifact_path, workflow_id, stem)
        except DagsterError as exc:
            raise pipeline_unavailable(exc) from exc
        # Artifacts stored before runs had folders name no path: the flat one.
        path = located or artifact_path(workflow_id, stem, extension)
        if not path.endswith(f".{extension}"):
            raise not_produced  # stored as the other kind (Gemini absent: JSON null)
    try:
        data = await run_in_threadpool(store.get_path, path)
    except BlobNotFoundError:
        raise not_produced from None
    return Response(data, media_type=_MEDIA_TYPES[extension], headers={"Cache-Control": "private, no-cache"})
