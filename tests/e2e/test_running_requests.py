"""Requests while they run, on a stack that reads status over GraphQL (STATUS_SOURCE=graphql),
its webhook watcher too (the stacks of the other files read the run storage).

Every model service answers over HTTP from the reference server; the A100 server's /generate
goes through a gate the test opens, so a run is held in its GENERATING_IMAGES step for exactly
as long as a test needs, however loaded the machine is. BiRefNet, SAM3 and the A100's refinement
go through gates of their own too (open unless a test closes them), for the progress test.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devtools.stack import REPO_ROOT, Stack, free_port, wait_for_http
from jewel_dagster.contract import STEP_PROGRESS
from tests.support.e2e_flows import CUP, PHOTO, TOUCH_UP, finished
from tests.support.e2e_stack import poll, run_worker, running_stack, runs_of, step_status, wait_until
from tests.support.infra import program
from tests.support.metrics import samples, value
from tests.support.receivers import webhook_receiver
from tests.support.servers import Gate, gated_proxy, reference_server, service_urls, set_knobs

pytestmark = pytest.mark.e2e
# A stroke: the A100 refines the mask (its latency, its call counted) only when there are strokes.
BODY = {"originalImageBase64": PHOTO, "maskPoints": [CUP], "brushStrokes": [TOUCH_UP]}
METRICS_TOKEN = "metrics-token-of-the-test"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@dataclass
class Deployment:
    stack: Stack
    reference: str  # the reference server's URL (knobs)
    gate: Gate  # holds a100/generate while closed
    step_gates: dict[str, Gate]  # seed step -> the gate that holds the model call it makes


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # The reference server's instant stand-ins: these tests look at statuses, cancels and
    # metrics, not pixels; the classical ones cost CPU on every request of the module.
    with (
        reference_server("--instant") as reference,
        gated_proxy(reference, "/birefnet/remove-background") as (birefnet, background_gate),
        gated_proxy(reference, "/sam3/segment") as (sam3, mask_gate),
        gated_proxy(reference, "/a100/refine-mask") as (refiner, refine_gate),
        gated_proxy(refiner, "/a100/generate") as (proxy, gate),
    ):
        # In the order of the steps: the test holds each in turn.
        step_gates = {
            "REMOVING_BACKGROUND": background_gate,
            "GENERATING_MASK": mask_gate,
            "REFINING_MASK": refine_gate,
        }
        for each in (gate, *step_gates.values()):
            each.release.set()  # open unless a test closes it
        env = {key.upper(): value for key, value in service_urls(reference).items()}
        env["BIREFNET_URL"] = f"{birefnet}/birefnet"
        env["SAM3_URL"] = f"{sam3}/sam3"
        env["A100_SERVER_URL"] = f"{proxy}/a100"
        env["STATUS_SOURCE"] = "graphql"
        env["REGENERATION_SENSOR_ENABLED"] = "false"
        env["METRICS_CACHE_SECONDS"] = "0"  # each scrape reads Dagster's storage afresh
        env["METRICS_API_KEY"] = METRICS_TOKEN
        env |= {"WEBHOOK_SECRET": "test-webhook-secret", "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_POLL_SECONDS": "0.5"}
        with running_stack(tmp_path_factory.mktemp("graphql"), env) as stack:
            yield Deployment(stack, reference, gate, step_gates)


@pytest.fixture
def client(deployment: Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=deployment.stack.gateway_url, timeout=30) as c:
        yield c


def test_graphql_status_reports_progress_until_completed(client: httpx.Client, deployment: Deployment) -> None:
    """And the webhook watcher over GraphQL: the run's `started` and `completed` webhooks, listed
    by its two queries (running runs that asked for live events, and finished runs)."""
    assert deployment.stack.env["STATUS_SOURCE"] == "graphql"
    # BiRefNet, SAM3 and the A100's refinement are each held until a poll (every 0.2 s) saw
    # their step: each step is seen however loaded the machine, and none waits longer than that.
    # (Was a second's latency on each of the three: 3 s of the test, and a miss if a loaded poll
    # came late.)
    gates = deployment.step_gates
    for gate in gates.values():
        gate.rearm()
    states: list[dict[str, Any]] = []
    with webhook_receiver() as receiver:
        try:
            hooks = {"webhookUrl": receiver.url, "webhookEvents": ["started", "completed"]}
            started = client.post("/workflow/start", json={**BODY, **hooks})
            assert started.status_code == 200, started.text
            workflow = started.json()["workflowId"]
            for step, gate in gates.items():
                # Until the step or one after it: a status that skips the held step fails at once.
                reached = STEP_PROGRESS[step]
                states += poll(client, workflow, lambda s, at=reached: s["progress"] >= at or finished(s), timeout=180)
                assert states[-1]["currentStep"] == step, f"{step} not reported while its call was held: {states[-1]}"
                if not receiver.posts():  # the run held in its first step until `started` came
                    wait_until(receiver.posts, "the started webhook", timeout=60)
                gate.release.set()
            states += poll(client, workflow, finished, timeout=180)
            wait_until(lambda: len(receiver.posts()) >= 2, "the completed webhook", timeout=60)
        finally:
            for gate in gates.values():
                gate.release.set()
        posts = receiver.posts()
    assert [p.headers["X-Jewel-Event"] for p in posts] == ["workflow.started", "workflow.finished"], posts
    assert json.loads(posts[0].body)["status"] == "RUNNING"
    final = states[-1]
    assert json.loads(posts[1].body) == final
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
            lambda: step_status(stack.dagster_url, workflow, "generate_images") == "IN_PROGRESS",
            "the generate_images step in progress",
        )
        (run,) = runs_of(stack.dagster_url, workflow)
        assert run["status"] == "STARTED", run["status"]
        worker = run_worker(stack)  # the run's worker, executing the held step
        assert worker is not None
        assert poll(client, workflow, lambda s: s["currentStep"] == "GENERATING_IMAGES")[-1]["status"] == "RUNNING"

        cancel = client.post(f"/workflow/{workflow}/cancel")
        # CANCELLED once the run stopped (the kill 5 s after the cancel), else 202 while it stops.
        assert (cancel.status_code, cancel.json()["status"]) in ((200, "CANCELLED"), (202, "RUNNING")), cancel.text
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
    # A worker that outlived the cancel would now get its answer and go on: only once it is gone
    # can nothing more come (checked right at the release, a surviving worker was not seen).
    wait_until(lambda: not Path(f"/proc/{worker}").exists(), "the run's worker gone", timeout=60)
    (run,) = runs_of(stack.dagster_url, workflow)
    made = _materialized(stack.dagster_url, run["runId"])
    assert not made & {"flux_generation", "gemini_generation", "flux_metrics"}, "nothing materialized after the cancel"
    assert client.post(f"/workflow/{workflow}/cancel").status_code == 409


def _materialized(dagster_url: str, run_id: str) -> set[str]:
    """The assets a run materialized (Dagster's GraphQL)."""
    query = (
        "query R($id: ID!) { runOrError(runId: $id) { ... on Run { assetMaterializations { assetKey { path } } } } }"
    )
    data = httpx.post(f"{dagster_url}/graphql", json={"query": query, "variables": {"id": run_id}}, timeout=30).json()
    return {m["assetKey"]["path"][-1] for m in data["data"]["runOrError"]["assetMaterializations"]}


def _json_lines(path: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_metrics_move_by_exactly_the_requests_made_and_one_request_id_follows_a_run(
    client: httpx.Client, deployment: Deployment
) -> None:
    """One completed (a preprocess), one cancelled (held in GENERATING_IMAGES) and one failed
    request (the reference server rejects SAM3), overlapping: /metrics moves by exactly those,
    and the completed one's X-Request-ID is on the gateway's lines and on its run's lines (each
    with its run id and step)."""
    stack, gate = deployment.stack, deployment.gate

    def scrape() -> dict[Any, float]:
        response = client.get("/metrics", headers=SCRAPER)
        assert response.status_code == 200, response.text
        return samples(response.text)

    # The cancel test before this one killed its run worker in a step that held a GPU slot: the
    # daemon frees it once the run has ended (run_monitoring.free_slots_after_run_end_seconds);
    # without that, the failed request below would wait for a slot forever.
    wait_until(lambda: value(scrape(), "jewel_pool_slots_claimed", pool="gpu") == 0, "the GPU slots freed", timeout=60)
    before = scrape()
    assert value(before, "jewel_dagster_storage_up") == 1
    request_id = f"e2e-{uuid.uuid4().hex}"
    gate.entered.clear()
    gate.release.clear()  # the cancelled request waits in GENERATING_IMAGES
    try:
        cancelled = client.post("/workflow/start", json=BODY).json()["workflowId"]
        started = client.post("/workflow/preprocess", json=BODY, headers={"X-Request-ID": request_id})
        assert started.headers["X-Request-ID"] == request_id
        completed = started.json()["workflowId"]
        assert poll(client, completed, finished, timeout=180)[-1]["status"] == "COMPLETED"
        gate.wait_entered(timeout=180)  # both past SAM3: the rejection below reaches neither
        set_knobs(deployment.reference, reject={"sam3/segment": 400})
        try:
            failed = client.post("/workflow/preprocess", json=BODY).json()["workflowId"]
            assert poll(client, failed, finished, timeout=120)[-1]["status"] == "FAILED"
        finally:
            set_knobs(deployment.reference)
        assert client.post(f"/workflow/{cancelled}/cancel").status_code == 200
        assert poll(client, cancelled, finished, timeout=120)[-1]["status"] == "CANCELLED"
    finally:
        # Released while the run is still CANCELING: the held call answers within the cancel
        # grace, and Dagster retries the interrupted step (its RetryPolicy); the retry must not
        # call the service again and carry the run to SUCCESS (ServiceBackend._refuse_if_cancelled).
        gate.release.set()

    full, pre = "jewelry_generation", "jewelry_preprocess"
    ended = "jewel_workflows_finished_total"
    expected_endings = {(pre, "completed"): 1, (pre, "failed"): 1, (full, "cancelled"): 1}

    def all_ended() -> dict[Any, float] | None:
        now = scrape()  # the cancelled run reaches CANCELED a moment after GET says CANCELLED
        moved = {
            (job, status): value(now, ended, dagster_job=job, status=status)
            - value(before, ended, dagster_job=job, status=status)
            for job, status in expected_endings
        }
        return now if moved == expected_endings else None

    after = wait_until(all_ended, "the three runs counted as ended", timeout=90)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("jewel_workflows_started_total", dagster_job=full) == 1
    assert moved("jewel_workflows_started_total", dagster_job=pre) == 2
    for job, status in ((full, "completed"), (full, "failed"), (pre, "cancelled")):
        assert moved(ended, dagster_job=job, status=status) == 0, (job, status)
    duration = "jewel_workflow_duration_seconds"
    for (job, status), count in expected_endings.items():
        assert moved(f"{duration}_count", dagster_job=job, status=status) == count
        assert moved(f"{duration}_bucket", dagster_job=job, status=status, le="+Inf") == count
    assert moved(f"{duration}_sum", dagster_job=pre, status="completed") > 0
    assert moved("jewel_run_queue_wait_seconds_count", dagster_job=full) == 1
    assert moved("jewel_run_queue_wait_seconds_count", dagster_job=pre) == 2
    # Model calls: SAM3 answered the completed and the cancelled request's masks and refused the
    # failed one's; the A100 refined the cancelled request's mask, and its generate call never
    # answered the run (a cancel is not a service error); resize and zoom check ran in all three.
    calls = "jewel_model_calls_total"
    assert moved(calls, service="sam3", outcome="ok") == 2
    assert moved(calls, service="sam3", outcome="error") == 1
    assert moved(calls, service="a100", outcome="ok") == 1
    assert moved(calls, service="flux", outcome="ok") + moved(calls, service="flux", outcome="error") == 0
    assert moved(calls, service="image_manipulator", outcome="ok") == 6
    assert moved(calls, service="image_manipulator", outcome="error") == 0
    assert moved("jewel_model_call_duration_seconds_count", service="sam3") == 2
    assert moved("jewel_model_call_duration_seconds_sum", service="sam3") > 0
    http = "jewel_http_requests_total"
    assert moved(http, method="POST", route="/workflow/start", status="200") == 1
    assert moved(http, method="POST", route="/workflow/preprocess", status="200") == 2
    assert moved(http, method="POST", route="/workflow/{workflow_id}/cancel", status="200") == 1
    assert moved("jewel_http_request_duration_seconds_count", method="POST", route="/workflow/preprocess") == 2
    assert value(after, "jewel_pool_slots", pool="gpu") == 2
    assert value(after, "jewel_runs_in_progress") == 0 and value(after, "jewel_runs_queued") == 0

    # One request id through the gateway's lines and the run's (the run worker logs to the code
    # server's output: it is forked from it).
    (run,) = runs_of(stack.dagster_url, completed)
    assert stack.log_dir is not None
    gateway_lines = [x for x in _json_lines(stack.log_dir / "gateway.log") if x.get("requestId") == request_id]
    launched = next(x for x in gateway_lines if x["message"].startswith("launched"))
    assert launched["workflowId"] == completed and launched["runId"] == run["runId"]
    access = next(x for x in gateway_lines if x["logger"] == "gateway.http")
    assert access["route"] == "/workflow/preprocess" and access["status"] == 200
    assert access["workflowId"] == completed
    run_lines = [x for x in _json_lines(stack.log_dir / "code_server.log") if x.get("requestId") == request_id]
    assert {x["runId"] for x in run_lines} == {run["runId"]}
    assert {x["workflowId"] for x in run_lines} == {completed}
    steps = {x.get("step") for x in run_lines if x.get("event") == "STEP_SUCCESS"}
    assert {"prepare_canvas", "segment_jewelry"} <= steps, steps


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((REPO_ROOT / "deploy/grafana/dashboards/jewel-dagster.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_a_real_prometheus_scrapes_the_gateway_and_every_dashboard_query_has_series(
    client: httpx.Client, deployment: Deployment, tmp_path: Path
) -> None:
    """Debian's Prometheus, configured from deploy/prometheus/prometheus.yml (its bearer-token file
    included), scrapes the gateway every second; each PromQL query of the Grafana dashboard then
    answers series through Prometheus' HTTP API."""
    prometheus = program("prometheus", "apt-get install prometheus")
    config = yaml.safe_load((REPO_ROOT / "deploy/prometheus/prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    (scrape,) = config["scrape_configs"]
    scrape["static_configs"] = [{"targets": [urllib.parse.urlsplit(deployment.stack.gateway_url).netloc]}]
    token = tmp_path / "metrics_api_key"
    token.write_text(METRICS_TOKEN)
    scrape["authorization"]["credentials_file"] = str(token)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "prometheus.log", "wb") as out:
        process = subprocess.Popen(
            [str(prometheus), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_http(f"{url}/-/ready", 60, process)

        def query(expr: str) -> list[Any]:
            answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
            assert answer["status"] == "success", (expr, answer)
            return list(answer["data"]["result"])

        # Traffic between scrapes (the earlier tests of this module made the runs).
        wait_until(lambda: query('count_over_time(up{job="jewel-gateway"}[1m]) >= 3'), "three scrapes", timeout=60)
        client.get("/health")
        # A scrape times out after the 1 s interval: on a loaded machine one may miss, the next
        # answers (a refused key or a broken /metrics never does).
        wait_until(
            lambda: query('up{job="jewel-gateway"}')[0]["value"][1] == "1",
            "a scrape of the gateway answered",
            timeout=30,
        )
        # A query over rate() needs two samples of its series: look again for a while.
        deadline = time.monotonic() + 30
        empty = _dashboard_queries()
        while empty and time.monotonic() < deadline:
            time.sleep(0.5)
            empty = [expr for expr in empty if not query(expr)]
        assert empty == []
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
