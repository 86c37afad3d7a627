"""Whose workflow it is: checked in one place for every route that reads one workflow.

A workflow is the caller's when its runs carry the caller's owner tag (runs started from the
Dagster UI carry none and inherit the request's first run's), or, before its run exists, when
its pending background start names the caller. Another caller's workflow answers 404 like an
unknown one.
"""

from __future__ import annotations

import re

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError
from gateway.dagster_api.models import RunInfo
from gateway.security import ANONYMOUS
from gateway.starts import PendingStart, read_start
from gateway.workflows.errors import not_found, pipeline_unavailable
from jewel_dagster.contract import OWNER_TAG, PARTITION_TAG
from jewel_dagster.resources.blob_store import BlobStore

# Matched with fullmatch: `$` would let a trailing newline through.
WORKFLOW_ID = re.compile(r"jewelry-gen-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def owned_run(runs: DagsterRuns, workflow_id: str, caller: str, cached: bool = False) -> RunInfo:
    """The workflow's newest run; 404 when it does not exist or belongs to another caller.

    Shared by every route that reads one workflow, so ownership is checked in one place.
    """
    try:
        run = _owned_run(runs, workflow_id, caller, cached)
    except DagsterError as exc:
        raise pipeline_unavailable(exc) from exc
    if run is None:
        raise not_found(workflow_id)
    return run


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
        raise not_found(workflow_id)
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
