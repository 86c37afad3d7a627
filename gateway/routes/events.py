"""Live progress as Server-Sent Events: GET /workflow/{id}/events.

A page or CLI gets a step change the moment the gateway sees it instead of polling every two
seconds. The stream reads the same cached run state as GET, so a crowd of listeners costs
Dagster no more than one poller per workflow.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError
from gateway.deps import ResultsDep, RunsDep, SettingsDep
from gateway.results import ResultReader
from gateway.routes.workflows import WorkflowIdPath, owned_run
from gateway.schemas import ONE_WORKFLOW, WorkflowState, error_responses
from gateway.security import CallerDep
from gateway.settings import GatewaySettings
from gateway.workflow_state import FINAL_STATUSES, progress_of, state_of

router = APIRouter(prefix="/workflow", tags=["workflow"])

KEEPALIVE_SECONDS = 15.0


def sse(event: str, data: dict[str, object], event_id: int) -> str:
    """One event in the text/event-stream format; JSON never holds a raw newline."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _body(state: WorkflowState) -> dict[str, object]:
    return state.model_dump(exclude_none=True)


def _current_state(workflow_id: str, runs: DagsterRuns, results: ResultReader) -> WorkflowState | None:
    """Progress while running (cheap), the full state once ended; None when the run is gone."""
    run = runs.latest_run_cached(workflow_id)
    if run is None:
        return None
    state = progress_of(workflow_id, run)
    return state_of(workflow_id, run, runs, results) if state.status in FINAL_STATUSES else state


async def _stream(
    workflow_id: str, request: Request, runs: DagsterRuns, results: ResultReader, settings: GatewaySettings
) -> AsyncIterator[str]:
    last: tuple[str, str, int] | None = None
    event_id = 0
    started = last_write = time.monotonic()
    yield f"retry: {int(settings.event_poll_seconds * 4000)}\n\n"
    while time.monotonic() - started < settings.event_stream_max_seconds:
        if await request.is_disconnected():
            return
        try:
            state = await run_in_threadpool(_current_state, workflow_id, runs, results)
        except DagsterError as exc:
            yield f": the pipeline did not answer ({exc}); retrying\n\n"
            await anyio.sleep(settings.event_poll_seconds * 4)
            continue
        if state is None:  # deleted from Dagster while we listened
            yield sse("error", {"detail": f"workflow {workflow_id} no longer exists"}, event_id + 1)
            return
        if state.status in FINAL_STATUSES:
            yield sse("final", _body(state), event_id + 1)
            return
        key = (state.status, state.currentStep, state.progress)
        if key != last:
            event_id += 1
            last, last_write = key, time.monotonic()
            yield sse("progress", _body(state), event_id)
        elif time.monotonic() - last_write > KEEPALIVE_SECONDS:
            last_write = time.monotonic()
            yield ": keep-alive\n\n"  # proxies close idle connections
        await anyio.sleep(settings.event_poll_seconds)
    yield sse("timeout", {"detail": "the stream's time is up; reconnect to keep listening"}, event_id + 1)


@router.get(
    "/{workflow_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "progress events, then one final event"},
        **error_responses(*ONE_WORKFLOW),
    },
)
async def workflow_events(
    workflow_id: WorkflowIdPath,
    request: Request,
    runs: RunsDep,
    results: ResultsDep,
    settings: SettingsDep,
    caller: CallerDep,
) -> StreamingResponse:
    """`progress` on every step change, then `final` with what GET returns once the workflow ended.

    Polling GET /workflow/{id} keeps working unchanged; this is the same state, pushed.
    """
    await run_in_threadpool(owned_run, runs, workflow_id, caller, True)  # 404 before the stream opens
    return StreamingResponse(
        _stream(workflow_id, request, runs, results, settings),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
