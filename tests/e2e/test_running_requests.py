"""Requests while they run, on a stack that reads status over GraphQL (STATUS_SOURCE=graphql).

Every model service answers over HTTP from the reference server; the A100 server's /generate
goes through a gate the test opens, so a run is held in its GENERATING_IMAGES step for exactly
as long as a test needs, however loaded the machine is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from devtools.stack import Stack
from tests.support.e2e_flows import CUP, PHOTO, finished
from tests.support.e2e_stack import poll, running_stack, runs_of, step_status, wait_until
from tests.support.servers import Gate, gated_proxy, reference_server, service_urls, set_knobs

pytestmark = pytest.mark.e2e
BODY = {"originalImageBase64": PHOTO, "maskPoints": [CUP]}


@dataclass
class Deployment:
    stack: Stack
    reference: str  # the reference server's URL (knobs)
    gate: Gate  # holds a100/generate while closed


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with reference_server() as reference, gated_proxy(reference, "/a100/generate") as (proxy, gate):
        gate.release.set()  # open unless a test closes it
        env = {key.upper(): value for key, value in service_urls(reference).items()}
        env["A100_SERVER_URL"] = f"{proxy}/a100"
        env["STATUS_SOURCE"] = "graphql"
        env["REGENERATION_SENSOR_ENABLED"] = "false"
        with running_stack(tmp_path_factory.mktemp("graphql"), env) as stack:
            yield Deployment(stack, reference, gate)


@pytest.fixture
def client(deployment: Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=deployment.stack.gateway_url, timeout=30) as c:
        yield c


def test_graphql_status_reports_progress_until_completed(client: httpx.Client, deployment: Deployment) -> None:
    assert deployment.stack.env["STATUS_SOURCE"] == "graphql"
    # A second on three services: each of their steps is seen by a poll every 0.2 s.
    latency = {"birefnet/remove-background": 1.0, "sam3/segment": 1.0, "a100/refine-mask": 1.0}
    set_knobs(deployment.reference, latency=latency)
    try:
        started = client.post("/workflow/start", json=BODY)
        assert started.status_code == 200, started.text
        workflow = started.json()["workflowId"]
        states = poll(client, workflow, finished, timeout=180)
    finally:
        set_knobs(deployment.reference)
    final = states[-1]
    assert final["status"] == "COMPLETED", final
    assert final["progress"] == 100 and final["currentStep"] == "COMPLETED"
    assert final["result"]["flux_result_base64"] and final["result"]["flux_metrics"]["iou"] > 0
    running = [s for s in states if s["status"] == "RUNNING"]
    steps = {s["currentStep"] for s in running}
    assert {"REMOVING_BACKGROUND", "GENERATING_MASK", "REFINING_MASK"} <= steps, steps
    progress = [s["progress"] for s in states]
    assert progress == sorted(progress) and 0 < min(progress) < 100, progress
    (run,) = runs_of(deployment.stack.dagster_url, workflow)
    assert run["status"] == "SUCCESS"


def test_cancel_an_executing_request(client: httpx.Client, deployment: Deployment) -> None:
    stack, gate = deployment.stack, deployment.gate
    gate.entered.clear()
    gate.release.clear()  # the next a100/generate call waits here
    try:
        workflow = client.post("/workflow/start", json=BODY).json()["workflowId"]
        gate.wait_entered(timeout=180)
        # Executing, not queued: Dagster has the step in progress, GET says so too.
        wait_until(
            lambda: step_status(stack.dagster_url, workflow, "generations") == "IN_PROGRESS",
            "the generations step in progress",
        )
        (run,) = runs_of(stack.dagster_url, workflow)
        assert run["status"] == "STARTED", run["status"]
        assert poll(client, workflow, lambda s: s["currentStep"] == "GENERATING_IMAGES")[-1]["status"] == "RUNNING"

        cancel = client.post(f"/workflow/{workflow}/cancel")
        assert cancel.status_code == 200, cancel.text
        assert cancel.json() == {"workflowId": workflow, "status": "CANCELLED"}
        final = poll(client, workflow, finished, timeout=120)[-1]
        assert final["status"] == "CANCELLED", final
        assert "result" not in final
        wait_until(
            lambda: runs_of(stack.dagster_url, workflow)[0]["status"] == "CANCELED",
            "the Dagster run CANCELED",
            timeout=60,  # well under the 120 s service timeout: the cancel itself must end the run
        )
    finally:
        gate.release.set()
    assert step_status(stack.dagster_url, workflow, "flux_metrics") is None, "nothing ran after the cancel"
    assert client.post(f"/workflow/{workflow}/cancel").status_code == 409
