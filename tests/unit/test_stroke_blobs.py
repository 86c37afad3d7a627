"""Brush strokes travel as a blob (like images): run config holds only its URI (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from gateway.dagster_api.errors import DagsterUnavailable
from jewel_dagster.defs.assets import _load_strokes
from jewel_dagster.defs.config import RefineConfig
from jewel_dagster.request_inputs import BRUSH_STROKES
from jewel_dagster.resources.blob_store import LocalBlobStore
from jewel_dagster.storage_layout import strokes_path
from tests.support.answers import PIPELINE_DOWN, assert_refused
from tests.support.gateway_client import gateway_client, poll_until, start_body, stored_blobs

LONG = {"points": [{"x": 0.2 + 0.00005 * i, "y": 0.5} for i in range(10_000)], "mode": "add", "size": 40}


class _Launches:
    """Stands in for Dagster behind the gateway: records what would be launched."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def install(self, runs: Any) -> None:
        runs.ping = lambda timeout=None: True
        runs.add_partition = lambda request_id: None
        runs.delete_partition = lambda request_id: None
        runs.latest_run = lambda request_id: None
        runs.launch = self.launch

    def launch(self, job: str, request_id: str, run_config: dict[str, Any], tags: dict[str, str]) -> None:
        if self.fail:
            raise DagsterUnavailable("down for the test")
        self.calls.append({"job": job, "request_id": request_id, "run_config": run_config})


def test_start_stores_the_strokes_and_puts_only_their_uri_in_run_config(tmp_path: Path) -> None:
    launches = _Launches()
    with gateway_client(tmp_path) as client:
        launches.install(client.app.state.runs)  # type: ignore[attr-defined]
        response = client.post("/workflow/start", json=start_body(brushStrokes=[LONG, LONG]))
        store = client.app.state.store  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text
    (call,) = launches.calls
    refine = call["run_config"]["ops"]["generate_images"]["config"]["refined_mask"]
    assert set(refine) == {"strokes_uri"}
    assert refine["strokes_uri"].startswith(f"local://jewelry-uploads/requests/{call['request_id']}/strokes/")
    # 20,000 points would have been ~1 MB of run config; now it is a few hundred bytes.
    assert len(json.dumps(call["run_config"])) < 1000
    stored = BRUSH_STROKES.validate_json(store.get(refine["strokes_uri"]))
    assert [s.model_dump() for s in stored] == [LONG, LONG]


def test_no_strokes_no_blob(tmp_path: Path) -> None:
    launches = _Launches()
    with gateway_client(tmp_path) as client:
        launches.install(client.app.state.runs)  # type: ignore[attr-defined]
        assert client.post("/workflow/start", json=start_body()).status_code == 200
    (call,) = launches.calls
    assert call["run_config"]["ops"]["generate_images"]["config"]["refined_mask"] == {}
    assert not list((tmp_path / "blobs").rglob("*.json"))


def test_a_launch_that_fails_leaves_no_strokes_behind(tmp_path: Path) -> None:
    launches = _Launches(fail=True)
    with gateway_client(tmp_path, start_in_background=False) as client:
        launches.install(client.app.state.runs)  # type: ignore[attr-defined]
        response = client.post("/workflow/start", json=start_body(brushStrokes=[LONG]))
    assert_refused(response, 503, PIPELINE_DOWN)
    assert not [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]


def test_a_background_launch_that_gives_up_leaves_no_upload_or_strokes_behind(tmp_path: Path) -> None:
    """START_IN_BACKGROUND: the start was accepted; once the launcher gives up, GET says FAILED and
    only the (failed) pending start is left, the record GET reads."""
    launches = _Launches(fail=True)
    with gateway_client(tmp_path, start_give_up_seconds=0.3) as client:
        launches.install(client.app.state.runs)  # type: ignore[attr-defined]
        response = client.post("/workflow/start", json=start_body(brushStrokes=[LONG]))
        assert response.status_code == 200, response.text
        workflow = response.json()["workflowId"]
        state = poll_until(lambda: client.get(f"/workflow/{workflow}").json(), lambda s: s["status"] != "RUNNING")
    assert state["status"] == "FAILED" and state["failedStep"] == "UPLOADING_IMAGE", state
    assert "could not be reached" in state["error"], state
    assert stored_blobs(tmp_path) == [f"jewelry-uploads/starts/{workflow}.json"]


def test_the_step_loads_the_strokes_with_the_request_model(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path))
    good = store.put(strokes_path("rid", "a"), json.dumps([LONG]).encode())
    assert [s.model_dump() for s in _load_strokes(good, store)] == [LONG]
    assert _load_strokes(None, store) == []
    # A blob written by hand (or an older gateway) gets the API's limits too.
    bomb = {"points": [{"x": float(i % 2), "y": float(i % 2)} for i in range(10_000)], "mode": "add", "size": 2667}
    bad = store.put(strokes_path("rid", "b"), json.dumps([bomb]).encode())
    with pytest.raises(dg.Failure, match=r"not valid: 0\.size: Input should be less than or equal to 300"):
        _load_strokes(bad, store)
    huge = store.put(strokes_path("rid", "c"), json.dumps([{**bomb, "size": 300}]).encode())
    with pytest.raises(dg.Failure, match="2,000 million"):
        _load_strokes(huge, store)
    with pytest.raises(dg.Failure, match="brush strokes: no blob"):
        _load_strokes(store.uri_for(strokes_path("rid", "missing")), store)


def test_a_run_from_the_dagster_ui_needs_no_strokes() -> None:
    assert RefineConfig().strokes_uri is None
