"""A cancel racing the run's end: Dagster refuses to terminate a run that just ended."""

from __future__ import annotations

from pathlib import Path

from gateway.dagster_api.errors import DagsterError
from gateway.dagster_api.models import RunInfo
from jewel_dagster.contract import FULL_JOB
from tests.support.gateway_client import gateway_with_fake_dagster

WORKFLOW = "jewelry-gen-00000000-0000-0000-0000-000000000000"


def test_a_run_that_ended_before_its_terminate_answers_409_not_502(tmp_path: Path) -> None:
    with gateway_with_fake_dagster(tmp_path) as (client, dagster):
        statuses = iter(["STARTED", "CANCELED"])  # what each look finds

        def latest_run(request_id: str) -> RunInfo:
            return RunInfo("run-1", FULL_JOB, next(statuses), [], {})

        def terminate(run_id: str) -> None:
            raise DagsterError("Dagster refused the request: the run is not in progress")

        dagster.latest_run = latest_run  # type: ignore[method-assign]
        dagster.terminate = terminate  # type: ignore[attr-defined]
        response = client.post(f"/workflow/{WORKFLOW}/cancel")
    assert response.status_code == 409 and "already ended: CANCELLED" in response.json()["detail"], response.text
