"""The seed's /workflow endpoints: parse, call one service in gateway/workflows/, answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, Response, status

from gateway.bounded_reads import ReadsStalled
from gateway.deps import LauncherDep, QuotasDep, RunsDep, SettingsDep, StoreDep
from gateway.json_route import OffLoopJSONRoute
from gateway.schemas import (
    ONE_WORKFLOW,
    STARTS,
    GenerateRequest,
    StartRequest,
    StartResponse,
    WorkflowState,
    error_responses,
)
from gateway.security import CallerDep
from gateway.workflows import begin, cancel, reading
from gateway.workflows.errors import state_unreadable
from gateway.workflows.ownership import WORKFLOW_ID
from jewel_dagster.contract import FULL_JOB, PREPROCESS_JOB

router = APIRouter(prefix="/workflow", tags=["workflow"], route_class=OffLoopJSONRoute)

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
    return begin.start(FULL_JOB, body, runs, store, settings, launcher, caller, idempotency_key, quotas)


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
    return begin.start(PREPROCESS_JOB, body, runs, store, settings, launcher, caller, idempotency_key, quotas)


@router.post("/generate", response_model=StartResponse, responses=error_responses(*STARTS, 409))
def generate_workflow(
    body: GenerateRequest,
    runs: RunsDep,
    store: StoreDep,
    settings: SettingsDep,
    caller: CallerDep,
    quotas: QuotasDep,
    launcher: LauncherDep,
    idempotency_key: IdempotencyHeader = None,
) -> StartResponse:
    """Refine a preprocessed mask with brush strokes and generate.

    The imageUri/maskUri of one earlier preprocess continue that request's partition (one
    lineage; 409 while a run of it is still going); any other pair of the caller's image
    artifacts starts a new request with them as inputs.
    """
    return begin.generate(body, runs, store, settings, caller, quotas, idempotency_key, launcher)


@router.get(
    "/{workflow_id}",
    response_model=WorkflowState,  # the schema /docs shows; the body is encoded as FastAPI would
    response_model_exclude_none=True,
    responses=error_responses(*ONE_WORKFLOW, 410),
)
async def get_workflow(workflow_id: WorkflowIdPath, request: Request, caller: CallerDep) -> Response:
    """Status of the request's newest run; results once it completed; 410 once retention removed it.
    While it runs, `queuePosition` and `etaSeconds` when the gateway knows them."""
    # What every poll of a running request asks: answered on the event loop from the status cache
    # when it can be (no thread hand-off, no model validated); anything that reads, on a thread.
    # The clients come from app.state, not as dependencies: FastAPI solves each dependency on every
    # request (~20 us apiece, the largest cost left in this route once it answers from memory).
    state = request.app.state
    estimates = getattr(state, "queue_estimates", None)
    lookup = estimates.lookup if estimates is not None else None
    body = reading.remembered_body(workflow_id, state.runs, caller, lookup)
    if body is None:
        # Bounded: a poll never waits on a paused or unreachable storage past the deadline, and
        # only so many reads are left behind on one (gateway/bounded_reads.py).
        deadline = state.settings.status_read_deadline_seconds
        try:
            body = await state.state_reads.run(
                lambda: reading.workflow_body(
                    workflow_id, state.runs, state.results, state.store, caller, state.finished_bodies, lookup
                ),
                deadline,
            )
        except ReadsStalled:
            raise state_unreadable(deadline) from None
    return Response(content=body, media_type="application/json")


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
    answer = cancel.cancel(runs, store, settings, workflow_id, caller)
    if answer.still_stopping:
        response.status_code = status.HTTP_202_ACCEPTED
    return answer.body
