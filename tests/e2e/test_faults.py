"""Faults: a service outage longer than the retry budget. (Killed run workers, code server, daemon,
webserver and gateway restarts: test_process_faults.py, on one stack.)"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.e2e_flows import CUP, PHOTO, finished
from tests.support.e2e_stack import free_port, poll, running_stack
from tests.support.servers import service_urls

pytestmark = pytest.mark.e2e
BODY = {"originalImageBase64": PHOTO, "maskPoints": [CUP]}


def test_service_outage_longer_than_the_retry_budget_fails_naming_the_service(tmp_path: Path) -> None:
    nothing_there = f"http://127.0.0.1:{free_port()}"  # the reference server, stopped
    env = {key.upper(): value for key, value in service_urls(nothing_there).items()}
    env["REGENERATION_SENSOR_ENABLED"] = "false"
    with running_stack(tmp_path, env) as stack, httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        workflow = client.post("/workflow/start", json=BODY).json()["workflowId"]
        final = poll(client, workflow, finished, timeout=120)[-1]
    assert final["status"] == "FAILED"
    assert final["failedStep"] == "RESIZING_IMAGE"
    assert "ImageManipulator" in final["error"] and "unreachable" in final["error"]
    # The service's internal address stays in the logs (issue 14, finding 7).
    assert "127.0.0.1" not in final["error"] and "[internal address]" in final["error"], final["error"]
