"""End to end: where brush strokes land on /generate, and every run keeping its own artifacts.

On the two-callers stack (TWO_CALLERS_STACK, requests as caller alpha): its instant backends keep
the real local refiner, which paints the strokes, and nothing here looks at what the segmenter or
the generators drew, only at where strokes land and which run stored what.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from devtools.stack import Stack
from jewel_dagster.resources.blob_store import LocalBlobStore
from jewel_dagster.vision import imaging
from tests.support.e2e_flows import CUP, PHOTO
from tests.support.e2e_flows import finished as _finished
from tests.support.e2e_stack import ALPHA, poll, runs_of
from tests.support.photos import to_jpeg
from tests.support.shared_stacks import TWO_CALLERS_STACK, SharedStacks, shared_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(shared_stacks: SharedStacks) -> Iterator[Stack]:
    yield from shared_stack(shared_stacks, TWO_CALLERS_STACK)


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=30, headers=ALPHA) as c:
        yield c


def _store(stack: Stack) -> LocalBlobStore:
    return LocalBlobStore(root=stack.env["LOCAL_BLOB_ROOT"])


def _panorama() -> bytes:
    """A 6:1 photo (1200x200): a gold ring on a noisy grey wall, left of centre."""
    rng = np.random.default_rng(3)
    image = np.clip(120 + rng.normal(0, 8, (200, 1200, 3)), 0, 255).astype(np.uint8)
    ring = np.zeros((200, 1200), np.uint8)
    cv2.circle(ring, (240, 100), 60, 1, -1)
    cv2.circle(ring, (240, 100), 30, 0, -1)
    image[ring > 0] = (212, 175, 55)
    return to_jpeg(image)


def _completed(client: httpx.Client, workflow_id: str, with_metrics: bool = False) -> dict[str, Any]:
    states = poll(client, workflow_id, _finished)
    done = states[-1]
    assert done["status"] == "COMPLETED", done
    if with_metrics:
        assert "flux_metrics" in done["result"], done
    return done


def _preprocess(client: httpx.Client, photo_b64: str, point: dict[str, Any]) -> tuple[str, dict[str, str]]:
    pre = client.post("/workflow/preprocess", json={"originalImageBase64": photo_b64, "maskPoints": [point]})
    assert pre.status_code == 200, pre.text
    workflow_id = pre.json()["workflowId"]
    return workflow_id, _completed(client, workflow_id)["result"]


def _generate(client: httpx.Client, workflow_id: str, uris: dict[str, str], strokes: list[Any]) -> dict[str, Any]:
    gen = client.post("/workflow/generate", json={**uris, "brushStrokes": strokes})
    assert gen.status_code == 200, gen.text
    assert gen.json()["workflowId"] == workflow_id
    # GET reports the new run once it is registered: wait until it ran the generate steps.
    return poll(
        client, workflow_id, lambda s: s["status"] != "RUNNING" and "flux_metrics" in s.get("result", {}), timeout=180
    )[-1]


def test_generate_strokes_are_normalised_on_the_canvas_image(client: httpx.Client, stack: Stack) -> None:
    workflow_id, uris = _preprocess(client, base64.b64encode(_panorama()).decode(), {"x": 0.2, "y": 0.5, "label": 1})
    # (0.5, 0.9) on the canvas is in its bottom margin (the 6:1 photo fills 2000x333 of 2000x2667).
    stroke = {"points": [{"x": 0.5, "y": 0.9}], "mode": "add", "size": 80}
    done = _generate(client, workflow_id, uris, [stroke])
    assert done["status"] == "COMPLETED", done
    final = imaging.decode_png(_store(stack).get(done["result"]["finalMaskUri"]))
    assert final.shape == (2667, 2000)
    assert final[int(0.9 * 2667), 1000], "the stroke did not land where it was drawn on the canvas"
    photo_x, photo_y = imaging.plan_canvas(1200, 200).to_canvas(0.5, 0.9)
    window = final[int(photo_y) - 40 : int(photo_y) + 40, int(photo_x) - 40 : int(photo_x) + 40]
    assert not window.any(), "the stroke landed where the point would be on the photo"


_HISTORY = """
query History($partition: String!) {
  assetOrError(assetKey: {path: ["flux_generation"]}) {
    ... on Asset {
      assetMaterializations(partitions: [$partition]) {
        runId
        metadataEntries { label ... on TextMetadataEntry { text } }
      }
    }
  }
}"""


def test_two_generates_keep_both_results(client: httpx.Client, stack: Stack) -> None:
    workflow_id, uris = _preprocess(client, PHOTO, CUP)
    store = _store(stack)
    first = _generate(client, workflow_id, uris, [])
    stroke = {"points": [{"x": 0.1, "y": 0.1}, {"x": 0.3, "y": 0.1}], "mode": "add", "size": 80}
    second = _generate(client, workflow_id, uris, [stroke])
    assert first["status"] == second["status"] == "COMPLETED"
    assert first["result"]["finalMaskUri"] != second["result"]["finalMaskUri"]
    generate_runs = [r["runId"] for r in runs_of(stack.dagster_url, workflow_id) if r["jobName"] == "jewelry_generate"]
    assert len(generate_runs) == 2

    response = httpx.post(
        f"{stack.dagster_url}/graphql", json={"query": _HISTORY, "variables": {"partition": workflow_id}}, timeout=30
    )
    history = response.json()["data"]["assetOrError"]["assetMaterializations"]
    assert sorted(m["runId"] for m in history) == sorted(generate_runs)
    images = {}
    for materialization in history:
        path = {e["label"]: e.get("text") for e in materialization["metadataEntries"]}["path"]
        assert materialization["runId"] in path, path  # its own blob
        images[materialization["runId"]] = store.get_path(path)  # both still readable
        served = client.get(
            f"/workflow/{workflow_id}/artifacts/flux_generation.png", params={"runId": materialization["runId"]}
        )
        assert served.status_code == 200 and served.content == images[materialization["runId"]]
    assert len(set(images.values())) == 2  # two different generations, neither replaced
    # GET and the artifact without a run id report the newest run.
    newest = client.get(f"/workflow/{workflow_id}/artifacts/final_mask.png")
    assert newest.content == store.get(second["result"]["finalMaskUri"])
