"""The answers every workflow service shares: Dagster unreachable or refusing, and no such workflow."""

from __future__ import annotations

import logging

from fastapi import HTTPException, status

from gateway.dagster_api.errors import DagsterError, DagsterUnavailable, public_message

log = logging.getLogger("gateway.workflows")


def pipeline_unavailable(exc: DagsterError) -> HTTPException:
    """A generic answer with an error id; what Dagster said (addresses included) goes to the log."""
    detail = public_message(exc, log)
    if isinstance(exc, DagsterUnavailable):
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=detail, headers={"Retry-After": "5"})
    return HTTPException(status.HTTP_502_BAD_GATEWAY, detail=detail)


def state_unreadable(deadline: float) -> HTTPException:
    """503 for a GET whose read of Dagster's storage outlived the deadline (PostgreSQL paused or
    unreachable): the frontend retries after Retry-After rather than hanging on the poll."""
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail=f"The workflow's state could not be read within {deadline:g} s (the pipeline's storage is slow "
        "to answer); retry shortly.",
        headers={"Retry-After": "2"},
    )


def not_found(workflow_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no workflow {workflow_id[:100]!r}")
