"""Operating the pipeline through Dagster: re-generation by the sensor.

(The GPU pool's test runs on the fault tests' stack, which has a pool of one: tests/e2e/test_process_faults.py.)
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.e2e_stack import poll, running_stack, runs_of
from tests.support.photos import RING_CLICK, synthetic_ring, to_jpeg

pytestmark = pytest.mark.e2e

RING = base64.b64encode(to_jpeg(synthetic_ring(900, 1200)[0])).decode()


_CHECKS = """
query Checks($partition: String!) {
  assetCheckExecutions(assetKey: {path: ["flux_metrics"]}, checkName: "fidelity", partition: $partition, limit: 10) {
    runId
    evaluation { success metadataEntries { label ... on TextMetadataEntry { text } } }
  }
}"""


def _check_history(dagster_url: str, partition: str) -> list[dict[str, Any]]:
    body = {"query": _CHECKS, "variables": {"partition": partition}}
    return httpx.post(f"{dagster_url}/graphql", json=body, timeout=30).json()["data"]["assetCheckExecutions"]


def test_failed_check_is_regenerated_by_the_sensor(tmp_path: Path) -> None:
    env = {
        "LOCAL_FLUX_GROW_PX": "30",
        "LOCAL_FLUX_GROW_SEEDS": "[0]",  # the first try bleeds, a re-generation with a new seed does not
        "REGENERATION_SENSOR_INTERVAL_SECONDS": "1",
        "SENSOR_LOOP_SECONDS": "1",  # the daemon looks at the sensor every second (production: 5 s)
    }
    with running_stack(tmp_path, env) as stack, httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        started = client.post("/workflow/start", json={"originalImageBase64": RING, "maskPoints": [RING_CLICK]}).json()
        workflow = started["workflowId"]
        # The sensor may re-generate within a second of the first run, before a poll sees it:
        # wait for the end state, then read the history from Dagster.
        final = poll(
            client,
            workflow,
            lambda s: s["status"] == "COMPLETED" and s["result"]["checks"].get("fidelity", {}).get("passed") is True,
            timeout=120,
        )[-1]
        assert 0.9 <= final["result"]["flux_metrics"]["growth_ratio"] <= 1.1

        runs = runs_of(stack.dagster_url, workflow)
        assert [r["jobName"] for r in runs] == ["jewelry_regenerate", "jewelry_generation"], "one re-generation"
        regeneration, first = runs
        tags = {t["key"]: t["value"] for t in regeneration["tags"]}
        assert tags["jewel/regenerate-reason"] == "failed-check" and tags["jewel/regenerate-attempt"] == "1"

        newest, oldest = _check_history(stack.dagster_url, workflow)
        assert oldest["runId"] == first["runId"] and oldest["evaluation"]["success"] is False
        violations = {e["label"]: e.get("text") for e in oldest["evaluation"]["metadataEntries"]}["violations"]
        assert "growth_ratio" in violations
        assert newest["runId"] == regeneration["runId"] and newest["evaluation"]["success"] is True
        assert final["result"]["checks"]["fidelity"]["runId"] == regeneration["runId"]  # GET shows the new result
