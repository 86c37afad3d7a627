"""Asserting a refusal by what a frontend shows, not only by its status code: a 404 of the wrong
kind (FastAPI's "Not Found" for a path no route matches, another check's message) has the same
status as the one a test means."""

from __future__ import annotations

import httpx


def assert_refused(response: httpx.Response, status: int, detail: str) -> None:
    """`response` answered `status` with a JSON `detail` that contains `detail`."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert isinstance(body.get("detail"), str) and detail in body["detail"], (detail, body)


def no_workflow(workflow_id: str) -> str:
    """The 404 message of a workflow that does not exist or is another caller's."""
    return f"no workflow {workflow_id[:100]!r}"


NEEDS_KEY = "a valid API key is required (X-API-Key header or Authorization: Bearer)"
PIPELINE_DOWN = "The pipeline (Dagster) is unavailable; retry shortly (error id "
