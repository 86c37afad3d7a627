"""The stack with every model service over HTTP on the reference server (loopback), and a
service outage longer than the retry budget (the same stack with the server stopped). Killed run
workers, code server, daemon, webserver and gateway restarts: test_process_faults.py."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from devtools.stack import Stack
from tests.support.e2e_flows import CUP, PHOTO, TOUCH_UP, finished
from tests.support.e2e_stack import held_port, poll, running_stack, runs_of
from tests.support.photos import coffee_jpeg
from tests.support.servers import reference_server, service_urls, set_knobs

pytestmark = pytest.mark.e2e


_REEXECUTE = """
mutation Reexecute($parentRunId: String!) {
  launchRunReexecution(reexecutionParams: {parentRunId: $parentRunId, strategy: FROM_FAILURE}) {
    __typename
    ... on PythonError { message }
  }
}"""


def _services_when(client: httpx.Client, state: str, timeout: float = 15.0) -> dict[str, str]:
    """Poll /health until sam3 reports ``state`` (probes are cached for HEALTH_CACHE_SECONDS)."""
    deadline = time.monotonic() + timeout
    while True:
        services = client.get("/health").json()["services"]
        if services["sam3"] == state or time.monotonic() > deadline:
            return services
        time.sleep(0.5)


@dataclass(frozen=True)
class Services:
    stack: Stack
    port: int  # where the model services are: the reference server while a test runs one there


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """A stack whose every model service is at one loopback port, where nothing listens but while
    a test runs the reference server there."""
    # Held for the module: nothing listens there between the tests, and nothing else takes it.
    with held_port() as port:
        env = {key.upper(): value for key, value in service_urls(f"http://127.0.0.1:{port}").items()}
        # The re-execution below completes with a failed fidelity check: the re-generation sensor
        # would regenerate it (Flux and SAM3 called again) while the calls are counted, as it once
        # did under load in the suite.
        env["REGENERATION_SENSOR_ENABLED"] = "false"
        # /health reuses its probes for 5 s by default: the test waited ~4 s for the "offline"
        # probed at the stack's start to expire once the reference server answered. The same
        # cache, shorter.
        env["HEALTH_CACHE_SECONDS"] = "0.5"
        # One try a call: the outage test then waits out the steps' RetryPolicy alone (8.1 s;
        # 12.7 s with each call's own three tries, n=1). Those tries are
        # tests/unit/test_service_retries.py's.
        env["SERVICE_CALL_ATTEMPTS"] = "1"
        with running_stack(tmp_path_factory.mktemp("services"), env) as stack:
            yield Services(stack, port)


def test_service_failure_reaches_the_gateway_and_health_probes_services(services: Services) -> None:
    stack, port = services.stack, services.port
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        # Instant stand-ins behind the contracts (what is checked is how failures and the model's
        # name travel, not pixels): the classical ones cost ~1 CPU-s more.
        with reference_server("--instant", port=port) as server:
            set_knobs(server, reject={"a100/generate": 400})
            assert _services_when(client, "online") == {
                "a100": "online",
                "imageManipulator": "online",
                "birefnet": "online",
                "sam3": "online",
                "gemini": "offline",
            }
            photo = base64.b64encode(coffee_jpeg()).decode()
            # A stroke: the A100 refines the mask only when there are strokes (maskRefiner below).
            body = {"originalImageBase64": photo, "maskPoints": [{"x": 0.45, "y": 0.42}], "brushStrokes": [TOUCH_UP]}
            response = client.post("/workflow/start", json=body)
            assert response.status_code == 200, response.text
            started = response.json()
            final = poll(client, started["workflowId"], lambda s: s["status"] != "RUNNING")[-1]
            assert final["status"] == "FAILED", final
            assert final["failedStep"] == "GENERATING_IMAGES"
            assert "FluxGenerator" in final["error"] and "400" in final["error"]
            assert "rejected the request" in final["error"]
            assert httpx.get(f"{server}/_stats").json()["a100/generate"] == 1  # permanent: not retried

            # Fix Flux, then "Re-execute from failure" as the Dagster UI does, over GraphQL: the
            # gateway reports the partition's newest run, which completes. SAM3 now refuses the
            # metrics call: the images still stand, the metrics read null with the reason (the
            # internal address hidden), and the fidelity check says why. (Metrics measured over
            # HTTP: tests/unit/test_service_contracts.py.)
            set_knobs(server, reject={"sam3/segment": 400})
            failed_run = runs_of(stack.dagster_url, started["workflowId"])[0]["runId"]
            launched = httpx.post(
                f"{stack.dagster_url}/graphql",
                json={"query": _REEXECUTE, "variables": {"parentRunId": failed_run}},
                timeout=30,
            ).json()["data"]["launchRunReexecution"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            # (the failed run's state stays in the gateway's cache a moment: wait for another one)
            done = poll(client, started["workflowId"], lambda s: finished(s) and s != final)[-1]
            assert done["status"] == "COMPLETED", done
            result = done["result"]
            assert result["flux_result_base64"] and result["flux_metrics"] is None
            assert result["flux_metrics_error"].startswith("the segmenter could not measure the Flux image")
            assert "rejected the request" in result["flux_metrics_error"]
            assert result["checks"]["fidelity"]["passed"] is False
            assert str(port) not in str(result)  # no internal address anywhere in the result
            backends = result["backends"]
            assert backends["sam3"] == "http" and backends["maskRefiner"] == "http", backends
            assert backends["flux"] == "reference-instant"  # the model the A100 server named
            calls = httpx.get(f"{server}/_stats").json()
            # Steps that had succeeded are not run again: the re-execution runs the failed step and
            # what follows it (flux_metrics asks SAM3 once, to measure; jewelry_mask does not run).
            retried = runs_of(stack.dagster_url, started["workflowId"])[0]
            assert {s["stepKey"] for s in retried["stepStats"]} == {"generate_images"}, retried
            assert calls.get("sam3/segment", 0) == 1, calls  # refused at once: not retried
            assert calls["a100/generate"] == 1

        # The reference server is gone: once the health cache expires the probes say so.
        services = _services_when(client, "offline")
        assert services["sam3"] == "offline" and services["a100"] == "offline"


def test_service_outage_longer_than_the_retry_budget_fails_naming_the_service(services: Services) -> None:
    # Nothing listens at the services' port (the reference server of the test above has stopped).
    with httpx.Client(base_url=services.stack.gateway_url, timeout=30) as client:
        workflow = client.post("/workflow/start", json={"originalImageBase64": PHOTO, "maskPoints": [CUP]}).json()
        final = poll(client, workflow["workflowId"], finished, timeout=120)[-1]
    assert final["status"] == "FAILED"
    assert final["failedStep"] == "RESIZING_IMAGE"
    assert "ImageManipulator" in final["error"] and "unreachable" in final["error"]
    # The service's internal address stays in the logs (issue 14, finding 7).
    assert "127.0.0.1" not in final["error"] and "[internal address]" in final["error"], final["error"]
