"""Live progress as Server-Sent Events: GET /workflow/{id}/events.

A page or CLI gets a step change the moment the gateway sees it instead of polling every two
seconds. The streams of one workflow share one status poll (gateway.event_streams), which reads
the same cached run state as GET: a crowd of listeners costs Dagster and the gateway no more
than one poller per workflow, and an idle stream only waits. Open streams are capped per caller
and in total.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from functools import partial

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from gateway.deps import EstimatesDep, EventStreamsDep, ResultsDep, RunsDep, SettingsDep, StoreDep
from gateway.event_streams import (
    RETRY_AFTER_SECONDS,
    SHUTDOWN_RETRY_MS,
    StreamLease,
    StreamLimitReached,
    Watch,
    eta_moved,
)
from gateway.routes.workflows import WorkflowIdPath
from gateway.schemas import ONE_WORKFLOW, WorkflowState, error_responses
from gateway.security import ANONYMOUS, CallerDep, client_network
from gateway.settings import GatewaySettings
from gateway.workflow_state import FINAL_STATUSES
from gateway.workflows import reading
from gateway.workflows.ownership import owned_run_or_start

router = APIRouter(prefix="/workflow", tags=["workflow"])

KEEPALIVE_SECONDS = 15.0


def sse(event: str, data: dict[str, object], event_id: int) -> str:
    """One event in the text/event-stream format; JSON never holds a raw newline."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _body(state: WorkflowState) -> dict[str, object]:
    return state.model_dump(exclude_none=True)


async def _stream(workflow_id: str, watch: Watch, lease: StreamLease, settings: GatewaySettings) -> AsyncIterator[str]:
    """The events of one listener of the workflow's shared watch; idle, it only waits on an event.

    A client that goes away is noticed by the response (Starlette cancels the stream), which
    then releases the lease.
    """
    try:
        last: tuple[str, str, int, int | None] | None = None
        sent_eta: int | None = None
        event_id = seen = 0
        started = last_write = time.monotonic()
        yield f"retry: {int(settings.event_poll_seconds * 4000)}\n\n"
        while (left := settings.event_stream_max_seconds - (time.monotonic() - started)) > 0:
            until_keepalive = KEEPALIVE_SECONDS - (time.monotonic() - last_write)
            woken = lease.draining or await watch.wait(seen, min(left, until_keepalive))
            if lease.draining:  # before the wait, or what woke it
                yield f"retry: {SHUTDOWN_RETRY_MS}\n\n"
                yield sse("shutdown", {"detail": "the gateway is restarting; reconnect"}, event_id + 1)
                return
            if not woken:
                if time.monotonic() - last_write >= KEEPALIVE_SECONDS:
                    last_write = time.monotonic()
                    yield ": keep-alive\n\n"  # proxies close idle connections
                continue
            seen, snapshot = watch.version, watch.snapshot
            assert snapshot is not None
            if snapshot.error is not None:
                yield f": {snapshot.error} Retrying.\n\n"
                continue
            state = snapshot.state
            if state is None:  # deleted from Dagster while we listened
                yield sse("error", {"detail": f"workflow {workflow_id} no longer exists"}, event_id + 1)
                return
            if state.status in FINAL_STATUSES:
                yield sse("final", _body(state), event_id + 1)
                return
            key = (state.status, state.currentStep, state.progress, state.queuePosition)
            if key != last or eta_moved(sent_eta, state.etaSeconds, time.monotonic() - last_write):
                event_id += 1
                last, last_write, sent_eta = key, time.monotonic(), state.etaSeconds
                yield sse("progress", _body(state), event_id)
        yield sse("timeout", {"detail": "the stream's time is up; reconnect to keep listening"}, event_id + 1)
    finally:
        lease.release()


class EventStreamResponse(StreamingResponse):
    """A StreamingResponse that gives its stream's place back however it ends.

    The generator's own `finally` does not run when it never started (the client left before
    the headers went out), so the response releases the lease too (releasing is idempotent).
    """

    def __init__(self, content: AsyncIterator[str], lease: StreamLease) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.lease = lease

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.lease.release()


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
    streams: EventStreamsDep,
    store: StoreDep,
    caller: CallerDep,
    estimates: EstimatesDep,
) -> StreamingResponse:
    """`progress` on every step change, then `final` with what GET returns once the workflow ended.

    Polling GET /workflow/{id} keeps working unchanged; this is the same state, pushed. At most
    `EVENT_STREAMS_PER_CALLER` open streams per caller (per client address without API keys) and
    `EVENT_STREAMS_TOTAL` in all; beyond either, 429 with `Retry-After`.
    """
    holder = caller if caller != ANONYMOUS else client_network(request.client.host if request.client else None)
    try:
        lease = streams.open(holder)
    except StreamLimitReached as exc:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, detail=str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        ) from None
    try:
        await run_in_threadpool(owned_run_or_start, runs, store, workflow_id, caller, True)  # 404 before it opens
        lookup = estimates.lookup if estimates is not None else None
        watch = lease.follow(workflow_id, partial(reading.current_state, workflow_id, runs, results, store, lookup))
    except BaseException:
        lease.release()
        raise
    return EventStreamResponse(_stream(workflow_id, watch, lease, settings), lease)
