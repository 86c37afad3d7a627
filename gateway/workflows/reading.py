"""Reading one workflow: its state (or its 410 once removed), the state an event stream sends,
and one of its stored artifacts."""

from __future__ import annotations

import re
import time

from fastapi import HTTPException, status

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError
from gateway.eta import seconds_left
from gateway.results import ResultReader
from gateway.schemas import WorkflowState
from gateway.security import ANONYMOUS
from gateway.starts import PendingStart, read_start, state_of_start
from gateway.state_bodies import FinishedBodies, encode_progress, encode_state
from gateway.status import position_of
from gateway.workflow_state import FINAL_STATUSES, EstimateLookup, progress_of, state_of, with_estimate
from gateway.workflows.errors import pipeline_unavailable
from gateway.workflows.ownership import WORKFLOW_ID, owned_run, owned_run_or_start
from gateway.workflows.tombstones import removed
from jewel_dagster.contract import IMAGE_ASSETS, JSON_ASSETS, OWNER_TAG
from jewel_dagster.resources.blob_store import BlobNotFoundError, BlobStore
from jewel_dagster.storage_layout import RUN_ID_PATTERN, artifact_path

RUN_ID = re.compile(RUN_ID_PATTERN)
MEDIA_TYPES = {"png": "image/png", "json": "application/json"}
ENDED_RUN_STATUSES = frozenset({"SUCCESS", "FAILURE", "CANCELED"})  # Dagster's: the run never changes again


def remembered_body(
    workflow_id: str, runs: DagsterRuns, caller: str, estimates: EstimateLookup | None = None
) -> bytes | None:
    """The body of a running request's GET when memory answers it (the status cache holds its
    running run, the caller's by the run's owner tag), else None: `workflow_body` must be asked.

    Reads nothing, so GET answers it on the event loop: no thread hand-off, no model built and
    validated. Everything else (an ended run, checked by the id of the newest; a pending start; an
    owner on the request's first run; 404 and 410) goes the way of `workflow_body`."""
    if not WORKFLOW_ID.fullmatch(workflow_id):
        return None
    run = runs.remembered_run(workflow_id)
    if run is None or (caller != ANONYMOUS and run.tags.get(OWNER_TAG) != caller):
        return None
    position = position_of(run)
    if position.status in FINAL_STATUSES:
        return None  # (a running run kept by age is not final; `workflow_body` keeps final bodies)
    found = estimates(run.run_id) if estimates is not None and position.status == "RUNNING" else None
    if found is None:
        return encode_progress(workflow_id, position)
    return encode_progress(
        workflow_id, position, found.position_for(run.status, run.step_starts), seconds_left(found, time.time())
    )


def workflow_body(
    workflow_id: str,
    runs: DagsterRuns,
    results: ResultReader,
    store: BlobStore,
    caller: str,
    bodies: FinishedBodies,
    estimates: EstimateLookup | None = None,
) -> bytes:
    """`workflow_state` encoded; a finished run's body is encoded once and kept by its run id.

    Ownership and the 410 are checked first, at every GET, as `workflow_state` checks them: a kept
    body is answered only once the request's newest run is still that run and the caller's. While
    it runs, its queue position and ETA when `estimates` knows them."""
    try:
        run = owned_run_or_start(runs, store, workflow_id, caller, cached=True)
    except HTTPException as exc:
        gone = removed(store, workflow_id, caller) if exc.status_code == status.HTTP_404_NOT_FOUND else None
        if gone is not None:
            raise gone from None
        raise
    if isinstance(run, PendingStart):
        return encode_state(state_of_start(run))
    # Only a run Dagster ended keeps its answer: a FAILURE whose retry may follow is RUNNING for now.
    final = run.status in ENDED_RUN_STATUSES and position_of(run).status in FINAL_STATUSES
    if final and (kept := bodies.get(run.run_id)) is not None:
        return kept
    try:
        body = encode_state(with_estimate(state_of(workflow_id, run, runs, results), run, estimates))
    except DagsterError as exc:
        raise pipeline_unavailable(exc) from exc
    if final:
        bodies.put(run.run_id, body)
    return body


def current_state(
    workflow_id: str,
    runs: DagsterRuns,
    results: ResultReader,
    store: BlobStore,
    estimates: EstimateLookup | None = None,
) -> WorkflowState | None:
    """Progress while running (cheap), the full state once ended; None when the run is gone.
    Before its run exists, a workflow started in the background is its pending start."""
    run = runs.latest_run_cached(workflow_id)
    if run is None:
        start = read_start(store, workflow_id)
        if start is not None:
            return state_of_start(start)
        run = runs.latest_run(workflow_id)  # launched meanwhile: the record goes once the run exists
        if run is None:
            return None
    state = progress_of(workflow_id, run)
    return (
        state_of(workflow_id, run, runs, results)
        if state.status in FINAL_STATUSES
        else with_estimate(state, run, estimates)
    )


def artifact_name(name: str) -> tuple[str, str]:
    """(asset, extension) of an artifact's file name; 404 naming the ones there are otherwise."""
    stem, _, extension = name.rpartition(".")
    allowed = IMAGE_ASSETS if extension == "png" else JSON_ASSETS if extension == "json" else frozenset()
    if stem not in allowed:
        names = sorted([f"{n}.png" for n in IMAGE_ASSETS] + [f"{n}.json" for n in JSON_ASSETS])
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no artifact {name[:80]!r}; one of {', '.join(names)}")
    return stem, extension


def read_artifact(
    runs: DagsterRuns, store: BlobStore, workflow_id: str, name: str, run_id: str | None, caller: str
) -> tuple[bytes, str]:
    """The newest stored value of one asset of the caller's request (or the one a given run
    stored) and its media type; 404 when it was not produced."""
    stem, extension = artifact_name(name)
    owned_run(runs, workflow_id, caller, True)
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
            located = runs.artifact_path(workflow_id, stem)
        except DagsterError as exc:
            raise pipeline_unavailable(exc) from exc
        # Artifacts stored before runs had folders name no path: the flat one.
        path = located or artifact_path(workflow_id, stem, extension)
        if not path.endswith(f".{extension}"):
            raise not_produced  # stored as the other kind (Gemini absent: JSON null)
    try:
        data = store.get_path(path)
    except BlobNotFoundError:
        raise not_produced from None
    return data, MEDIA_TYPES[extension]
