"""Mask points and brush strokes outside what the pipeline accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway_client import gateway_client, start_body

STROKE = {"points": [{"x": 0.1, "y": 0.1}], "mode": "add", "size": 10}


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
    ],
)
def test_rejected_with_the_field_named(tmp_path: Path, changes: dict[str, Any], field: str, words: str) -> None:
    with gateway_client(tmp_path) as client:
        response = client.post("/workflow/start", json=start_body(**changes))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(field) and words in detail, detail
