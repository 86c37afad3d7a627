"""A cancel racing the run's end: Dagster refuses to terminate a run that just ended."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.dagster_api.errors import DagsterError
from gateway.dagster_api.models import RunInfo
from jewel_dagster.contract import FULL_JOB, WILL_RETRY_TAG
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


class StoppingRun:
    """A run that a terminate turns CANCELING, and that then ends as `ends` (None: never) after
    `looks` more looks at it."""

    def __init__(self, ends: str | None, looks: int = 3) -> None:
        self.status, self.ends, self.looks, self.terminated = "STARTED", ends, looks, 0

    def latest_run(self, request_id: str) -> RunInfo:
        if self.status == "CANCELING" and self.ends is not None:
            self.looks -= 1
            if self.looks <= 0:
                self.status = self.ends
        return RunInfo("run-1", FULL_JOB, self.status, [], {})

    def terminate(self, run_id: str) -> None:
        self.terminated += 1
        self.status = "CANCELING"


def _cancel(tmp_path: Path, run: StoppingRun, **settings: float) -> tuple[int, dict[str, str], list[str]]:
    """POST cancel; returns its status code, body, and what GET said while the run was stopping."""
    with gateway_with_fake_dagster(tmp_path, **settings) as (client, dagster):
        dagster.latest_run = run.latest_run  # type: ignore[method-assign]
        dagster.latest_run_cached = run.latest_run  # type: ignore[method-assign]
        dagster.terminate = run.terminate  # type: ignore[attr-defined]
        response = client.post(f"/workflow/{WORKFLOW}/cancel")
        seen = []
        while run.status == "CANCELING" and len(seen) < 3:
            seen.append(client.get(f"/workflow/{WORKFLOW}").json()["status"])
    return response.status_code, response.json(), seen


def test_cancelled_only_once_the_run_stopped(tmp_path: Path) -> None:
    run = StoppingRun(ends="CANCELED")
    code, body, _ = _cancel(tmp_path, run)
    assert (code, body) == (200, {"workflowId": WORKFLOW, "status": "CANCELLED"})
    assert run.terminated == 1 and run.status == "CANCELED"


def test_a_run_that_completes_after_its_cancel_was_never_said_cancelled(tmp_path: Path) -> None:
    """Issue 28: a step that did not stop finished the run; the API had already said CANCELLED."""
    code, body, _ = _cancel(tmp_path, StoppingRun(ends="SUCCESS"))
    assert code == 409 and body["detail"].endswith("already ended: COMPLETED"), body


def test_a_run_still_stopping_at_the_deadline_is_running_not_cancelled(tmp_path: Path) -> None:
    run = StoppingRun(ends=None)
    code, body, seen_by_get = _cancel(tmp_path, run, cancel_wait_seconds=0.3)
    assert (code, body) == (202, {"workflowId": WORKFLOW, "status": "RUNNING"})
    assert seen_by_get == ["RUNNING"] * 3  # CANCELING is not CANCELLED: it may still complete
    # Cancelled again: no second terminate, the same wait.
    code, _, _ = _cancel(tmp_path, run, cancel_wait_seconds=0.3)
    assert code == 202 and run.terminated == 1


def test_a_run_dagster_cannot_terminate_yet_answers_503_with_retry_after(tmp_path: Path) -> None:
    """Found by the soak (issue 32): with Celery, a run stays STARTING while its task waits in the
    broker for a worker (longer when a worker was just killed), and Dagster refuses to terminate
    a STARTING run. Past the cancel wait the gateway answered 502, a refusal; the cancel can be
    asked again once the run started: 503 and Retry-After say so, as for any transient cause."""
    with gateway_with_fake_dagster(tmp_path, cancel_wait_seconds=0.3) as (client, dagster):

        def latest_run(request_id: str) -> RunInfo:
            return RunInfo("run-1", FULL_JOB, "STARTING", [], {})

        def terminate(run_id: str) -> None:
            raise DagsterError(
                "Dagster refused the request: Run run-1 could not be terminated due to having status STARTING."
            )

        dagster.latest_run = latest_run  # type: ignore[method-assign]
        dagster.terminate = terminate  # type: ignore[attr-defined]
        response = client.post(f"/workflow/{WORKFLOW}/cancel")
    assert response.status_code == 503 and response.headers.get("Retry-After"), response.text
    assert "ask again" in response.json()["detail"], response.text


class RetriedRun:
    """run-1 FAILED with Dagster's retry coming (`dagster/will_retry`: "true"); after `looks`
    looks, the retry daemon either launched run-2 (`retried`) or gave the retry up ("false").
    Dagster refuses to terminate run-1 (it ended); run-2 stops at its terminate."""

    def __init__(self, retried: bool, looks: int = 3) -> None:
        self.retried, self.looks, self.terminated = retried, looks, []  # type: list[str]
        self.retry_status = "STARTED"

    def latest_run(self, request_id: str) -> RunInfo:
        self.looks -= 1
        if self.looks > 0:
            return RunInfo("run-1", FULL_JOB, "FAILURE", [], {WILL_RETRY_TAG: "true"}, end_time=time.time())
        if not self.retried:
            return RunInfo("run-1", FULL_JOB, "FAILURE", [], {WILL_RETRY_TAG: "false"}, end_time=time.time())
        return RunInfo("run-2", FULL_JOB, self.retry_status, [], {})

    def terminate(self, run_id: str) -> None:
        self.terminated.append(run_id)
        if run_id != "run-2":
            raise DagsterError("Dagster refused the request: the run is not in progress")
        self.retry_status = "CANCELED"


def _cancel_retried(tmp_path: Path, run: RetriedRun) -> tuple[int, dict[str, str]]:
    with gateway_with_fake_dagster(tmp_path, cancel_wait_seconds=5.0) as (client, dagster):
        dagster.latest_run = run.latest_run  # type: ignore[method-assign]
        dagster.latest_run_cached = run.latest_run  # type: ignore[method-assign]
        dagster.terminate = run.terminate  # type: ignore[attr-defined]
        response = client.post(f"/workflow/{WORKFLOW}/cancel")
    return response.status_code, response.json()


def test_a_cancel_while_dagster_retries_the_failed_run_stops_the_retry(tmp_path: Path) -> None:
    """GET says RUNNING while a failed run waits for its retry: a cancel then stops the retry.
    Before, it asked Dagster to terminate the failed run until the deadline (refused each time),
    answered an error, and the retry ran on."""
    run = RetriedRun(retried=True)
    code, body = _cancel_retried(tmp_path, run)
    assert (code, body) == (200, {"workflowId": WORKFLOW, "status": "CANCELLED"}), body
    assert run.terminated == ["run-2"]


def test_a_cancel_while_dagster_gives_the_retry_up_answers_failed(tmp_path: Path) -> None:
    run = RetriedRun(retried=False)
    code, body = _cancel_retried(tmp_path, run)
    assert code == 409 and body["detail"].endswith("already ended: FAILED"), body
    assert run.terminated == []
