"""The event stream's keep-alives and time limit, in-process against a run that never moves.

No stack: the gateway app runs under TestClient with its Dagster client swapped for one that
always answers the same RUNNING run, so the stream has nothing to report for as long as the
test likes. The stream code, its timing and its SSE framing are the real ones.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.dagster_api.models import RunAssets, RunInfo, StepStat
from gateway.routes import events
from jewel_dagster.contract import FULL_JOB
from tests.support.gateway_client import gateway_client

WORKFLOW = "jewelry-gen-00000000-0000-0000-0000-000000000001"
PLAN = {"original_image": "original_image", "resized_image": "resize_to_canvas"}
STUCK = RunInfo(
    "run-1",
    FULL_JOB,
    "STARTED",
    [StepStat("original_image", "SUCCESS", 1.0), StepStat("resize_to_canvas", "IN_PROGRESS", 2.0)],
    assets=RunAssets(PLAN, frozenset({"original_image"})),
)


class StuckRuns:
    """Answers the same running run on every call, and counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def latest_run_cached(self, request_id: str) -> RunInfo | None:
        self.calls += 1
        return STUCK if request_id == WORKFLOW else None


def _frames(text: str) -> list[str]:
    return [frame for frame in text.split("\n\n") if frame]


def test_keep_alives_while_nothing_changes_then_a_timeout_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0.3)
    limit = 2.0
    with gateway_client(tmp_path, event_poll_seconds=0.05, event_stream_max_seconds=limit) as client:
        real, runs = client.app.state.runs, StuckRuns()
        client.app.state.runs = runs
        try:
            began = time.monotonic()
            response = client.get(f"/workflow/{WORKFLOW}/events")
            took = time.monotonic() - began
        finally:
            client.app.state.runs = real
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    frames = _frames(response.text)
    assert frames[0].startswith("retry: ")
    assert frames[1].startswith("id: 1\nevent: progress\n") and '"currentStep":"RESIZING_IMAGE"' in frames[1]
    keep_alives = frames[2:-1]
    # One every 0.3 s of silence over a 2 s stream: at least 2 even when the machine is busy.
    assert len(keep_alives) >= 2 and set(keep_alives) == {": keep-alive"}, frames
    assert frames[-1].startswith("id: 2\nevent: timeout\ndata: ") and "reconnect" in frames[-1], frames[-1]
    assert took >= limit  # the stream ended by itself, once its time was up
    assert runs.calls >= 10  # it kept looking for a change all along


class MovingRuns(StuckRuns):
    """A run whose step changes on every call (back and forth between two steps: a fake)."""

    def latest_run_cached(self, request_id: str) -> RunInfo | None:
        self.calls += 1
        done = frozenset({"original_image"}) if self.calls % 2 else frozenset()
        return RunInfo("run-1", FULL_JOB, "STARTED", assets=RunAssets(PLAN, done))


def test_no_keep_alive_while_the_state_keeps_changing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0.3)
    with gateway_client(tmp_path, event_poll_seconds=0.05, event_stream_max_seconds=1.0) as client:
        real, runs = client.app.state.runs, MovingRuns()
        client.app.state.runs = runs
        try:
            response = client.get(f"/workflow/{WORKFLOW}/events")
        finally:
            client.app.state.runs = real
    names = [frame.split("\n")[1] for frame in _frames(response.text)[1:]]
    assert ": keep-alive" not in response.text
    assert names[-1] == "event: timeout" and set(names[:-1]) == {"event: progress"} and len(names) >= 4, names
