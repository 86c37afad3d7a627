"""End to end: real dagster-webserver + dagster-daemon + gateway over loopback HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from devtools.stack import Stack
from jewel_dagster.resources.blob_store import LocalBlobStore
from jewel_dagster.vision import imaging
from tests.support.answers import assert_refused, no_workflow
from tests.support.e2e_flows import CUP, PHOTO, full_request_completes
from tests.support.e2e_flows import finished as _finished
from tests.support.e2e_stack import poll
from tests.support.gateway_process import gateway_process
from tests.support.shared_stacks import LIVE_STACK, SharedStacks, shared_stack
from tests.support.tcp_forwarder import forwarder

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(shared_stacks: SharedStacks) -> Iterator[Stack]:
    yield from shared_stack(shared_stacks, LIVE_STACK)


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as c:
        yield c


def _store(stack: Stack) -> LocalBlobStore:
    return LocalBlobStore(root=stack.env["LOCAL_BLOB_ROOT"])


def test_start_reports_progress_then_results(client: httpx.Client) -> None:
    final = full_request_completes(client, fidelity=False)
    assert "flux_result_url" not in final["result"]  # a local folder has no URL to hand out


def test_preprocess_then_generate_with_a_brush_stroke(client: httpx.Client, stack: Stack) -> None:
    pre = client.post("/workflow/preprocess", json={"originalImageBase64": PHOTO, "maskPoints": [CUP]}).json()
    done = poll(client, pre["workflowId"], _finished)[-1]
    assert done["status"] == "COMPLETED", done
    assert set(done["result"]) == {"imageUri", "maskUri", "backends"}
    backends = {"imageManipulator": "local-classical", "birefnet": "instant", "sam3": "instant"}
    assert done["result"]["backends"] == backends  # the stack's stand-ins (LIVE_STACK)
    uris = {key: done["result"][key] for key in ("imageUri", "maskUri")}

    # A stroke in the photo's top-left corner, far from the cup: jewelry must appear there. On
    # /generate its points are normalised on the canvas image (imageUri).
    transform = imaging.plan_canvas(600, 400)
    on_canvas = [transform.to_canvas(x, 0.1) for x in (0.05, 0.2)]
    points = [{"x": x / 2000, "y": y / 2667} for x, y in on_canvas]
    stroke = {"points": points, "mode": "add", "size": 60}
    gen = client.post("/workflow/generate", json={**uris, "brushStrokes": [stroke]})
    assert gen.status_code == 200, gen.text
    assert gen.json()["workflowId"] == pre["workflowId"]  # same request partition, one lineage
    done = poll(
        client, pre["workflowId"], lambda s: s["status"] == "COMPLETED" and "flux_metrics" in s.get("result", {})
    )
    result = done[-1]["result"]
    store = _store(stack)
    before = imaging.decode_png(store.get(uris["maskUri"]))
    after = imaging.decode_png(store.get(result["finalMaskUri"]))
    x, y = transform.to_canvas(0.12, 0.1)
    assert not before[int(y), int(x)] and after[int(y), int(x)]
    assert np.count_nonzero(after & ~before) > 1000


# A cancel of a run executing a step: tests/e2e/test_run_progress.py (this one cancelled a start
# before its run existed, which tests/unit/test_background_starts.py covers). Concurrent starts,
# each launched once: tests/e2e/test_gateway_launches.py (instant backends).


def test_failed_request_names_the_step_and_the_reason(client: httpx.Client) -> None:
    # The cup photo with a click on the plain table edge and a brush that removes everything.
    # Brushes are at most 300 px: sweep the whole photo in rows 0.05 apart (<= 134 canvas px).
    rows = [{"x": float(i % 2 == j % 2), "y": i / 20} for i in range(21) for j in range(2)]
    erase = {"points": rows, "mode": "remove", "size": 300}
    started = client.post(
        "/workflow/start", json={"originalImageBase64": PHOTO, "maskPoints": [CUP], "brushStrokes": [erase]}
    ).json()
    final = poll(client, started["workflowId"], _finished)[-1]
    assert final["status"] == "FAILED"
    assert final["failedStep"] == "UPLOADING_MASK" and final["currentStep"] == "UPLOADING_MASK"
    assert "refined mask is empty" in final["error"]


def test_unknown_workflow_is_404(client: httpx.Client) -> None:
    unknown = "jewelry-gen-00000000-0000-0000-0000-000000000000"
    assert_refused(client.get(f"/workflow/{unknown}"), 404, no_workflow(unknown))
    assert_refused(client.get("/workflow/not-ours"), 404, no_workflow("not-ours"))
    assert_refused(client.post("/workflow/not-ours/cancel"), 404, no_workflow("not-ours"))


def test_dagster_down_gives_503_and_health_says_disconnected(stack: Stack, tmp_path: Path) -> None:
    # A gateway of its own, reaching the shared stack's webserver through a forwarder that is
    # then cut: Dagster goes away for this gateway alone (a stack of its own cost a start).
    with (
        forwarder(stack.dagster_port) as dagster,
        gateway_process(
            tmp_path, DAGSTER_PORT=str(dagster.port), HEALTH_CACHE_SECONDS="0.5", ALLOW_ANONYMOUS="true"
        ) as (url, _),
        httpx.Client(base_url=url, timeout=30) as c,
    ):
        assert c.get("/health").json()["dagster"] == "connected"
        dagster.cut()
        response = c.post("/workflow/start", json={"originalImageBase64": PHOTO, "maskPoints": [CUP]})
        assert response.status_code == 503
        assert "Dagster" in response.json()["detail"]
        # /health reuses its Dagster ping for up to 2 s (`ping_cached`; HEALTH_CACHE_SECONDS is the
        # model services' probes): the answer turns within that, and the ping's own 2 s timeout.
        cut = time.monotonic()
        while (health := c.get("/health").json())["dagster"] == "connected" and time.monotonic() < cut + 10:
            time.sleep(0.2)
        assert health["dagster"] == "disconnected" and health["temporal"] == "disconnected"
        assert time.monotonic() - cut <= 6, f"/health said connected {time.monotonic() - cut:.1f} s after the cut"
        assert health["status"] == "degraded"
    blobs = tmp_path / "blobs"
    assert not blobs.exists() or not any(blobs.rglob("upload")), "nothing is stored for a refused request"
