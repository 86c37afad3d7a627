"""Mask points and brush strokes outside what the pipeline accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway_client import gateway_client, gateway_with_fake_dagster, start_body, stored_blobs

STROKE = {"points": [{"x": 0.1, "y": 0.1}], "mode": "add", "size": 10}
ZIGZAG = [{"x": float(i % 2), "y": float(i % 2)} for i in range(10_000)]  # corner to corner and back


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"maskPoints": [{"x": 1.5, "y": 0.5, "label": 1}]}, "maskPoints[0].x", "less than or equal to 1"),
        ({"maskPoints": [{"x": 0.5, "y": -0.1, "label": 1}]}, "maskPoints[0].y", "greater than or equal to 0"),
        ({"maskPoints": [{"x": 0.5, "y": 0.5, "label": 2}]}, "maskPoints[0].label", "0 or 1"),
        ({"maskPoints": [{"x": 0.5, "y": 0.5, "label": 0}]}, "maskPoints", "label 1"),
        ({"maskPoints": []}, "maskPoints", "at least 1"),
        ({"brushStrokes": [{**STROKE, "mode": "smudge"}]}, "brushStrokes[0].mode", "'add' or 'remove'"),
        ({"brushStrokes": [{**STROKE, "size": 0}]}, "brushStrokes[0].size", "greater than 0"),
        ({"brushStrokes": [{**STROKE, "size": -3}]}, "brushStrokes[0].size", "greater than 0"),
        ({"brushStrokes": [{**STROKE, "points": []}]}, "brushStrokes[0].points", "at least 1"),
        (
            {"brushStrokes": [{**STROKE, "points": [{"x": 0.1, "y": 0.1}] * 10_001}]},
            "brushStrokes[0].points",
            "at most 10000",
        ),
        ({"brushStrokes": [STROKE] * 201}, "brushStrokes", "at most 200"),
        ({"brushStrokes": [{**STROKE, "size": 2667}]}, "brushStrokes[0].size", "less than or equal to 300"),
        ({"brushStrokes": [{**STROKE, "size": 300.5}]}, "brushStrokes[0].size", "less than or equal to 300"),
        (
            {"brushStrokes": [{**STROKE, "points": [{"x": 0.1, "y": 0.1}] * 10_000}] * 2 + [STROKE]},
            "brushStrokes",
            "at most 20000 are allowed",
        ),
        ({"brushStrokes": [{"points": ZIGZAG, "mode": "add", "size": 300}]}, "brushStrokes", "at most 2,000 million"),
        ({"brushStrokes": [{"points": ZIGZAG[:3700], "mode": "add", "size": 300}]}, "brushStrokes", "2,000 million"),
    ],
)
def test_rejected_with_the_field_named(tmp_path: Path, changes: dict[str, Any], field: str, words: str) -> None:
    with gateway_client(tmp_path) as client:
        response = client.post("/workflow/start", json=start_body(**changes))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(field) and words in detail, detail


@pytest.mark.parametrize(
    "changes",
    [
        {"maskPoints": [{"x": 1.5, "y": 0.5, "label": 1}]},
        {"maskPoints": [{"x": 0.5, "y": 0.5, "label": 0}]},
        {"maskPoints": []},
        {"brushStrokes": [{**STROKE, "mode": "smudge"}]},
    ],
    ids=["outside", "no-positive", "none", "bad-stroke"],
)
def test_refused_points_store_and_launch_nothing(tmp_path: Path, changes: dict[str, Any]) -> None:
    # Dagster answers here, so only the input check stands between the request and a stored upload.
    with gateway_with_fake_dagster(tmp_path) as (client, dagster):
        response = client.post("/workflow/start", json=start_body(**changes))
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(next(iter(changes))), response.text  # names the field
    assert stored_blobs(tmp_path) == []
    assert dagster.partitions_added == [] and dagster.launches == []


def test_stroke_limits_hold_for_the_canvas_and_the_web_page() -> None:
    from jewel_dagster import request_inputs as config
    from jewel_dagster.vision import imaging

    assert config.STROKE_CANVAS == (imaging.CANVAS_WIDTH, imaging.CANVAS_HEIGHT)
    # What the web page sends at its largest brush: 50 strokes of 200 pointer moves of 5 px.
    stroke = {"points": [{"x": 0.3 + 0.0025 * i, "y": 0.5} for i in range(200)], "mode": "add", "size": 300}
    assert config.BRUSH_STROKES.validate_python([stroke] * 50)
