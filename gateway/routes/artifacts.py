"""A request's stored artifacts over HTTP: GET /workflow/{id}/artifacts/{name}.

The web page draws the mask over the canvas image and offers the generations for download;
blob URIs (local:// or a private Azure container) are not something a browser can fetch.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from starlette.concurrency import run_in_threadpool

from gateway.deps import RunsDep, StoreDep
from gateway.routes.workflows import WorkflowIdPath, owned_run
from gateway.schemas import ONE_WORKFLOW, error_responses
from gateway.security import CallerDep
from jewel_dagster.contract import IMAGE_ASSETS, JSON_ASSETS
from jewel_dagster.resources.blob_store import BlobNotFoundError, artifact_path

router = APIRouter(prefix="/workflow", tags=["artifacts"])

_MEDIA_TYPES = {"png": "image/png", "json": "application/json"}


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
    workflow_id: WorkflowIdPath, name: str, runs: RunsDep, store: StoreDep, caller: CallerDep
) -> Response:
    """The newest stored value of one asset of the request, as PNG (images, masks) or JSON."""
    stem, extension = _split(name)
    await run_in_threadpool(owned_run, runs, workflow_id, caller, True)
    try:
        data = await run_in_threadpool(store.get_path, artifact_path(workflow_id, stem, extension))
    except BlobNotFoundError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"{name} has not been produced for {workflow_id} (yet)"
        ) from None
    return Response(data, media_type=_MEDIA_TYPES[extension], headers={"Cache-Control": "private, no-cache"})
