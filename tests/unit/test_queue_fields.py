"""`queuePosition` and `etaSeconds` in GET and in the event stream's bodies: there while the run
is RUNNING and the gateway's snapshot knows it, absent otherwise (the seed's fields unchanged).

The app runs under TestClient with Dagster replaced by a double and the background snapshot by a
dict (`FixedEstimates`): what is tested is the lookup and the bodies, not the refresher.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from gateway.dagster_api.models import RunInfo, StepStat
from gateway.eta import Estimate
from gateway.event_streams import Watch, eta_moved
from gateway.schemas import WorkflowState
from jewel_dagster.contract import FULL_JOB, PARTITION_TAG
from tests.support.gateway_client import FakeDagster, gateway_with_fake_dagster

WORKFLOW = "jewelry-gen-00000000-0000-4000-8000-000000000007"
SEED_FIELDS = {"workflowId", "status", "progress", "currentStep"}


class Runs(FakeDagster):
    """One run of WORKFLOW whose status the test sets; `statuses` are answered in turn, the last kept."""

    def __init__(self, *statuses: str, steps: list[StepStat] | None = None) -> None:
        super().__init__()
        self.statuses = list(statuses)
        self.steps = steps or []

    def latest_run(self, request_id: str) -> RunInfo | None:
        if request_id != WORKFLOW:
            return None
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return RunInfo("run-7", FULL_JOB, status, list(self.steps), tags={PARTITION_TAG: WORKFLOW})

    latest_run_cached = latest_run


class FixedEstimates:
    def __init__(self, found: dict[str, Estimate]) -> None:
        self.found = found

    def lookup(self, run_id: str) -> Estimate | None:
        return self.found.get(run_id)


def _client(client: TestClient, runs: Runs, estimates: FixedEstimates | None) -> None:
    client.app.state.runs = runs  # type: ignore[attr-defined]
    client.app.state.queue_estimates = estimates  # type: ignore[attr-defined]


def test_get_adds_the_position_and_eta_of_a_queued_run(tmp_path: Path) -> None:
    with gateway_with_fake_dagster(tmp_path) as (client, _):
        _client(client, Runs("QUEUED"), FixedEstimates({"run-7": Estimate(3, time.time() + 41.6)}))
        body = client.get(f"/workflow/{WORKFLOW}").json()
    assert body["status"] == "RUNNING" and body["queuePosition"] == 3
    assert body["etaSeconds"] in (41, 42)  # the second may turn between the two clocks
    assert set(body) == SEED_FIELDS | {"queuePosition", "etaSeconds"}


def test_a_run_that_left_the_queue_since_the_snapshot_shows_no_queue_position(tmp_path: Path) -> None:
    """The snapshot (a second old at most) still has the run 0th in the run queue; Dagster already
    says STARTING: its queue position is over, and its place in the GPU pool's line comes with the
    next snapshot. Showing the stale 0 made a "0 ahead" turn "1 ahead" at the same step."""
    snapshot = FixedEstimates({"run-7": Estimate(0, time.time() + 20, queued=True)})
    with gateway_with_fake_dagster(tmp_path) as (client, _):
        _client(client, Runs("QUEUED"), snapshot)
        assert client.get(f"/workflow/{WORKFLOW}").json()["queuePosition"] == 0
    for status in ("STARTING", "STARTED"):
        with gateway_with_fake_dagster(tmp_path) as (client, _):
            _client(client, Runs(status), snapshot)
            body = client.get(f"/workflow/{WORKFLOW}").json()
        assert "queuePosition" not in body and body["etaSeconds"] > 0, body
    pooled = FixedEstimates({"run-7": Estimate(2, time.time() + 20)})  # in the pool's line: shown
    with gateway_with_fake_dagster(tmp_path) as (client, _):
        _client(client, Runs("STARTED"), pooled)
        assert client.get(f"/workflow/{WORKFLOW}").json()["queuePosition"] == 2


def test_a_pooled_step_that_started_since_the_snapshot_shows_the_time_left_only(tmp_path: Path) -> None:
    """The snapshot saw the run's segmentation waiting in the GPU pool's line; the run's events,
    read since, have it started after that: GET drops the stale place and keeps the time left."""
    from jewel_dagster.contract import SEGMENT_OP

    for had_started, started, shown in ((False, None, 1), (True, time.time() - 5, 1), (False, time.time(), None)):
        snapshot = FixedEstimates({"run-7": Estimate(1, time.time() + 20, waiting=(SEGMENT_OP, had_started))})
        steps = [] if started is None else [StepStat(SEGMENT_OP, "IN_PROGRESS", started)]
        with gateway_with_fake_dagster(tmp_path) as (client, _):
            _client(client, Runs("STARTED", steps=steps), snapshot)
            body = client.get(f"/workflow/{WORKFLOW}").json()
        assert body.get("queuePosition") == shown and body["etaSeconds"] > 0, (had_started, started, body)


def test_get_leaves_out_what_is_not_known(tmp_path: Path) -> None:
    with gateway_with_fake_dagster(tmp_path) as (client, _):
        # Running its step (no position), ETA known.
        _client(client, Runs("STARTED"), FixedEstimates({"run-7": Estimate(None, time.time() + 5)}))
        body = client.get(f"/workflow/{WORKFLOW}").json()
        assert set(body) == SEED_FIELDS | {"etaSeconds"}
        # Not in the snapshot yet, or no snapshot at all (STATUS_SOURCE=graphql): the seed's body.
        for estimates in (FixedEstimates({}), None):
            _client(client, Runs("STARTED"), estimates)
            assert set(client.get(f"/workflow/{WORKFLOW}").json()) == SEED_FIELDS
        # Ended: never an ETA, even if the snapshot still has the run.
        _client(client, Runs("CANCELED"), FixedEstimates({"run-7": Estimate(0, time.time() + 5)}))
        body = client.get(f"/workflow/{WORKFLOW}").json()
        assert body["status"] == "CANCELLED" and set(body) == SEED_FIELDS


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith((":", "retry")))
        if "data" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def test_the_event_stream_sends_them_while_running_and_not_in_the_final_event(tmp_path: Path) -> None:
    with gateway_with_fake_dagster(tmp_path, event_poll_seconds=0.01) as (client, _):
        # Queued at 2 for three reads (the first is the stream's ownership check), at 1 for two,
        # then running, then cancelled (the stream ends by itself).
        runs = Runs(*["QUEUED"] * 5, *["STARTED"] * 3, "CANCELED")
        estimates = FixedEstimates({})
        _client(client, runs, estimates)
        original, reads = runs.latest_run, [0]

        def moving(request_id: str) -> RunInfo | None:
            reads[0] += 1
            position = 2 if reads[0] <= 3 else 1 if reads[0] <= 5 else None
            estimates.found["run-7"] = Estimate(position, time.time() + 30)
            return original(request_id)

        runs.latest_run = runs.latest_run_cached = moving  # type: ignore[method-assign]
        events = _events(client.get(f"/workflow/{WORKFLOW}/events").text)
    progress = [body for name, body in events if name == "progress"]
    assert [b.get("queuePosition") for b in progress] == [2, 1, None], progress
    assert all(b["etaSeconds"] in (29, 30) for b in progress), progress
    name, final = events[-1]
    assert name == "final" and final["status"] == "CANCELLED" and set(final) == SEED_FIELDS


def test_an_eta_that_only_counts_down_is_no_news() -> None:
    assert not eta_moved(30, 29, 1.0) and not eta_moved(30, 28, 0.5)  # counting down, within 3 s
    assert eta_moved(30, 40, 1.0) and eta_moved(30, 20, 1.0)  # moved beyond the countdown
    assert eta_moved(None, 12, 0.0) and not eta_moved(12, None, 0.0)  # a first one is; none is not
    assert not eta_moved(200, 185, 0.0) and eta_moved(200, 175, 0.0)  # a tenth of a long wait


def test_a_watch_wakes_its_listeners_for_a_new_position_not_for_a_countdown() -> None:
    """Each running workflow's watch reads every poll; an ETA that ticks down each second must
    not wake every listener each second (3,000 idle streams would be 3,000 wake-ups a second)."""
    end = time.monotonic() + 60
    reads = [0]

    def read() -> WorkflowState:
        reads[0] += 1
        position = 3 if reads[0] < 40 else 2
        left = round(end - time.monotonic())
        return WorkflowState(
            workflowId=WORKFLOW,
            status="RUNNING",
            progress=5,
            currentStep="UPLOADING_IMAGE",
            queuePosition=position,
            etaSeconds=left,
        )

    async def watch_for_a_while() -> int:
        watch = Watch(WORKFLOW, read, poll_seconds=0.03)
        watch.listeners = 1
        task = asyncio.create_task(watch.run())
        deadline = time.monotonic() + 10
        while reads[0] < 60 and time.monotonic() < deadline:  # ~1.8 s: the ETA ticks at least once
            await asyncio.sleep(0.01)
        watch.listeners = 0
        await task
        return watch.version

    assert asyncio.run(watch_for_a_while()) == 2  # the first state, then position 2
