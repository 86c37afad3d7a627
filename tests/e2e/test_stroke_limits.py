"""Issue 14: brush strokes cannot stall the service. (Its cancel of a CPU-bound step: test_cancel_in_c.py.)

On the two-callers stack (TWO_CALLERS_STACK, requests as caller alpha): its instant image
backends keep the real local refiner, which paints the strokes; what is measured is that
painting's CPU time, not the classical segmentation and generation around it (~20 CPU-s for the
four runs on the embedded default).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devtools.stack import Stack
from tests.support.e2e_flows import CUP, PHOTO, finished
from tests.support.e2e_stack import ALPHA, poll
from tests.support.shared_stacks import TWO_CALLERS_STACK, SharedStacks, shared_stack

pytestmark = pytest.mark.e2e

CORNERS = [{"x": float(i % 2), "y": float(i % 2)} for i in range(10_000)]  # zig-zag corner to corner
DENSE = [{"x": 0.5 + (i % 100) / 2000, "y": 0.5} for i in range(10_000)]  # 20,000 points, 1 px moves
BOMB = {"points": CORNERS, "mode": "add", "size": 2667}  # issue 14: ~16 CPU-minutes before


_REFINED_MASK_METADATA = """
query Refinement($partition: String!) {
  assetOrError(assetKey: {path: ["refined_mask"]}) {
    ... on Asset {
      assetMaterializations(partitions: [$partition], limit: 1) {
        metadataEntries { label ... on FloatMetadataEntry { floatValue } }
      }
    }
  }
}"""


def _painting_cpu_seconds(dagster_url: str, partition: str) -> float:
    """The CPU time the refined_mask step spent painting, from its materialization's metadata:
    unlike the step's wall time it does not grow when the machine is busy."""
    response = httpx.post(
        f"{dagster_url}/graphql",
        json={"query": _REFINED_MASK_METADATA, "variables": {"partition": partition}},
        timeout=30,
    )
    (materialization,) = response.json()["data"]["assetOrError"]["assetMaterializations"]
    entries = {e["label"]: e.get("floatValue") for e in materialization["metadataEntries"]}
    return float(entries["cpu_seconds"])


def _normal_request(client: httpx.Client) -> dict[str, Any]:
    """A request without strokes, polled to its end; its last state."""
    started = client.post("/workflow/start", json={"originalImageBase64": PHOTO, "maskPoints": [CUP]})
    assert started.status_code == 200, started.text
    return poll(client, started.json()["workflowId"], finished, timeout=180)[-1]


@pytest.fixture(scope="module")
def stack(shared_stacks: SharedStacks) -> Iterator[Stack]:
    yield from shared_stack(shared_stacks, TWO_CALLERS_STACK)


def test_stroke_bombs_are_refused_or_cheap_beside_a_normal_request(stack: Stack) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=60, headers=ALPHA) as client:
        normal: dict[str, Any] = {}
        beside = threading.Thread(target=lambda: normal.update(_normal_request(client)))
        beside.start()
        for strokes in ([BOMB], [{**BOMB, "size": 300}], [{**BOMB, "points": CORNERS[:3700], "size": 300}]):
            start = time.monotonic()
            refused = client.post(
                "/workflow/start", json={"originalImageBase64": PHOTO, "maskPoints": [CUP], "brushStrokes": strokes}
            )
            assert refused.status_code == 422, refused.text
            assert refused.json()["detail"].startswith("brushStrokes")
            assert time.monotonic() - start < 5
        # The costliest strokes the limits allow: each is painted in well under 5 CPU-seconds.
        allowed = [
            [{"points": CORNERS[:1830], "mode": "add", "size": 300}],
            [{"points": CORNERS[:100], "mode": "add", "size": 300}] * 18,
            [{"points": DENSE, "mode": "remove", "size": 300}] * 2,
        ]
        # Submitted together: each run's painting is timed on its own step, and waiting for them one
        # after another only made the suite slower.
        workflows = []
        for strokes in allowed:
            started = client.post(
                "/workflow/start", json={"originalImageBase64": PHOTO, "maskPoints": [CUP], "brushStrokes": strokes}
            )
            assert started.status_code == 200, started.text
            workflows.append(started.json()["workflowId"])
        for rid in workflows:
            final = poll(client, rid, finished, timeout=180)[-1]
            assert final["status"] in ("COMPLETED", "FAILED"), final  # an all-removing stroke fails UPLOADING_MASK
            assert _painting_cpu_seconds(stack.dagster_url, rid) < 5
        beside.join(timeout=300)
        assert normal.get("status") == "COMPLETED", normal
