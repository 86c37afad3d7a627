"""Workflow ids that are not ours are 404 before any query is made."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.support.answers import assert_refused, no_workflow
from tests.support.gateway_client import gateway_client


@pytest.mark.parametrize(
    "workflow_id",
    [
        "not-ours",
        "jewelry-gen-1234",
        'jewelry-gen-00000000-0000-0000-0000-000000000000"}) { __typename }',
        "jewelry-gen-00000000-0000-0000-0000-00000000000G",
        "..%5C..%5Cetc",  # an encoded slash is decoded before routing: no route, not our check
        "x" * 5000,
    ],
)
def test_ids_that_are_not_ours(tmp_path: Path, workflow_id: str) -> None:
    # Dagster is unreachable here: a 404 (not a 503) proves no query was attempted.
    with gateway_client(tmp_path) as client:
        decoded = unquote(workflow_id)
        assert_refused(client.get(f"/workflow/{workflow_id}"), 404, no_workflow(decoded))
        assert_refused(client.post(f"/workflow/{workflow_id}/cancel"), 404, no_workflow(decoded))


def test_a_workflow_id_with_a_trailing_newline_is_unknown(tmp_path: Path) -> None:
    """`$` in a pattern matches before a final newline: ids are matched whole (fullmatch)."""
    with gateway_client(tmp_path) as client:
        response = client.get("/workflow/jewelry-gen-00000000-0000-0000-0000-000000000000%0A")
    assert_refused(response, 404, no_workflow("jewelry-gen-00000000-0000-0000-0000-000000000000\n"))


def test_an_unreachable_pipeline_is_named_without_its_address(tmp_path: Path) -> None:
    with gateway_client(tmp_path) as client:
        response = client.get("/workflow/jewelry-gen-00000000-0000-0000-0000-000000000000")
    detail = response.json()["detail"]
    assert response.status_code == 503 and "error id" in detail and "127.0.0.1" not in detail, detail
