"""Bodies whose parsing alone would cost seconds: refused on their raw bytes (issue 14, finding 2)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.answers import PIPELINE_DOWN, assert_refused
from tests.support.gateway_client import gateway_client, start_body

GENERATE = {
    "imageUri": "local://jewelry-uploads/requests/x/a.png",
    "maskUri": "local://jewelry-uploads/requests/x/b.png",
}


def test_generate_takes_only_a_small_body(tmp_path: Path) -> None:
    """No photo travels to /generate: megabytes there are strokes, refused before parsing."""
    strokes = [{"points": [{"x": 0.5, "y": 0.5}] * 5000, "mode": "add", "size": 10}] * 20
    body = json.dumps({**GENERATE, "brushStrokes": strokes}).encode()
    assert len(body) > 2 * 1024 * 1024
    with gateway_client(tmp_path) as client:
        response = client.post("/workflow/generate", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than 2 MB" in response.json()["detail"]


def test_a_body_of_too_many_objects_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """22 MB of stroke points once took 1.5 GB and 9 s to parse and validate."""
    points = [{"x": 0.1, "y": 0.2}] * 1_000_000
    body = json.dumps(start_body(brushStrokes=[{"points": points, "mode": "add", "size": 5}])).encode()
    with gateway_client(tmp_path) as client:
        began = time.perf_counter()
        response = client.post("/workflow/start", content=body, headers={"content-type": "application/json"})
        seconds = time.perf_counter() - began
    assert response.status_code == 413 and "JSON objects" in response.json()["detail"], response.text
    assert seconds < 5.0, seconds  # the bound; parsing it took 9 s


def test_an_ordinary_request_passes_the_shape_limits(tmp_path: Path) -> None:
    strokes = [{"points": [{"x": 0.5, "y": 0.5}] * 50, "mode": "add", "size": 10}] * 10
    with gateway_client(tmp_path) as client:
        response = client.post("/workflow/start", json=start_body(brushStrokes=strokes))
    # Past every input check: the refusal is Dagster's absence (not running here), not the input.
    assert_refused(response, 503, PIPELINE_DOWN)
