"""A request's stored artifacts over HTTP: GET /workflow/{id}/artifacts/{name}.

The web page draws the mask over the canvas image and offers the generations for download;
blob URIs (local:// or a private Azure container) are not something a browser can fetch.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from gateway.deps import RunsDep, StoreDep
from gateway.routes.workflows import WorkflowIdPath
from gateway.schemas import ONE_WORKFLOW, error_responses
from gateway.security import CallerDep
from gateway.workflows import reading

router = APIRouter(prefix="/workflow", tags=["artifacts"])


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
    data, media_type = await run_in_threadpool(reading.read_artifact, runs, store, workflow_id, name, run_id, caller)
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, no-cache"})
