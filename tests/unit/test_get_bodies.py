"""GET /workflow/{id} answers bytes, not a model (issue 28): the same bytes FastAPI's response model
gave, a finished run's body encoded once and kept, a running one answered from memory on the event
loop; ownership and the 410 still come first."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from gateway import state_bodies
from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.models import RunInfo
from gateway.eta import Estimate
from gateway.schemas import WorkflowState
from gateway.security import caller_id
from gateway.state_bodies import FinishedBodies, encode_progress, encode_state
from gateway.status import position_of
from gateway.workflows import reading
from jewel_dagster.contract import FULL_JOB, OWNER_TAG, PARTITION_TAG, PARTITIONS_NAME, AssetName
from jewel_dagster.defs.retention import remove_requests
from jewel_dagster.storage_layout import artifact_path
from tests.support.gateway_client import gateway_client
from tests.support.instances import home_instance

KEYS = {"alpha": "alpha-key", "beta": "beta-key"}
# Floats pydantic and json.dumps write differently (0.00001 / 1e-05), nulls inside `result`, non-ASCII.
METRICS = {"ssim": 1e-05, "lpips": 0.1 + 0.2, "note": "bague à l'œil", "missing": None}
CHECK = {"passed": False, "reason": "trop sombre — ré-essayer", "score": 1e-07, "violations": None}


def _rid() -> str:
    return f"jewelry-gen-{uuid.uuid4()}"


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    with home_instance(tmp_path, monkeypatch) as found:
        yield found


@pytest.fixture
def client(tmp_path: Path, instance: dg.DagsterInstance) -> Iterator[TestClient]:
    with gateway_client(tmp_path, status_source="storage") as found:
        runs: DagsterRuns = found.app.state.runs  # type: ignore[attr-defined]
        # A verdict whose encoding matters (read from the storage: tests/unit/test_results_without_webserver.py).
        runs.fidelity_check = lambda request_id: dict(CHECK)  # type: ignore[method-assign]
        runs.failure_of = lambda run_id: ("jewelry_mask", "SAM3 (http://10.0.0.7:9000) timed out")  # type: ignore[method-assign]
        yield found


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 150, 30)).save(buf, "PNG")
    return buf.getvalue()


def _run(instance: dg.DagsterInstance, rid: str, status: dg.DagsterRunStatus, owner: str | None = None) -> str:
    instance.add_dynamic_partitions(PARTITIONS_NAME, [rid])
    tags = {PARTITION_TAG: rid, **({OWNER_TAG: owner} if owner else {})}
    run = dg.DagsterRun(job_name=FULL_JOB, status=status, tags=tags)
    instance.add_run(run)
    return run.run_id


def _completed(client: TestClient, instance: dg.DagsterInstance, rid: str, owner: str | None = None) -> str:
    run_id = _run(instance, rid, dg.DagsterRunStatus.SUCCESS, owner)
    store = client.app.state.store  # type: ignore[attr-defined]
    store.put(artifact_path(rid, AssetName.FLUX_GENERATION, "png", run_id), _png())
    store.put(artifact_path(rid, AssetName.FLUX_METRICS, "json", run_id), json.dumps(METRICS).encode())
    return run_id


def _reference(client: TestClient) -> TestClient:
    """The route as it was: a WorkflowState returned through FastAPI's response model."""
    state = client.app.state  # type: ignore[attr-defined]
    app = FastAPI()

    @app.get("/workflow/{workflow_id}", response_model=WorkflowState, response_model_exclude_none=True)
    def old(workflow_id: str) -> WorkflowState | None:
        return reading.current_state(workflow_id, state.runs, state.results, state.store)

    return TestClient(app)


@pytest.mark.parametrize("status", ["SUCCESS", "FAILURE", "CANCELED", "STARTED", "STARTING"])
def test_the_body_is_the_one_the_response_model_gave(
    client: TestClient, instance: dg.DagsterInstance, status: str
) -> None:
    rid = _rid()
    if status == "SUCCESS":
        _completed(client, instance, rid)
    else:
        _run(instance, rid, dg.DagsterRunStatus(status))
    answers = [client.get(f"/workflow/{rid}") for _ in range(3)]  # read, then answered from memory
    expected = _reference(client).get(f"/workflow/{rid}")
    assert expected.status_code == 200, expected.text
    for answer in answers:
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json", answer.text
        assert answer.content == expected.content
    if status == "SUCCESS":  # what it covers: pydantic's floats (json.dumps: 1e-05), nulls in `result`, base64
        assert '"ssim":0.00001' in answers[0].text and '"violations":null' in answers[0].text
        assert "œil" in answers[0].text and "œil" in answers[0].text and "flux_result_base64" in answers[0].text


def test_a_running_body_is_encoded_as_the_model_would_be() -> None:
    for status in ("QUEUED", "STARTED", "CANCELING", "NOT_STARTED"):
        run = RunInfo("r", FULL_JOB, status)
        position = position_of(run)
        model = WorkflowState(
            workflowId="w", status=position.status, progress=position.progress, currentStep=position.current_step
        )
        assert encode_progress("w", position) == encode_state(model)


def test_a_running_get_from_memory_carries_the_queue_estimate(
    client: TestClient, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event-loop path adds `queuePosition` and `etaSeconds` as the model path does."""
    rid = _rid()
    run_id = _run(instance, rid, dg.DagsterRunStatus.STARTED)
    client.app.state.settings.status_cache_seconds = 60.0  # type: ignore[attr-defined]  (no expiry in the test)
    client.get(f"/workflow/{rid}")  # read on a thread, kept by the status cache

    class Estimates:
        def lookup(self, wanted: str) -> Estimate | None:
            return Estimate(position=3, ends_at=time.time() + 41.6) if wanted == run_id else None

    monkeypatch.setattr(client.app.state, "queue_estimates", Estimates(), raising=False)
    slow: list[str] = []
    real = reading.workflow_body
    monkeypatch.setattr(reading, "workflow_body", lambda *args: slow.append(args[0]) or real(*args))
    answer = client.get(f"/workflow/{rid}")
    assert slow == [], "answered from memory"
    body = answer.json()
    assert body["queuePosition"] == 3 and body["etaSeconds"] in (41, 42), body
    assert list(body)[-2:] == ["queuePosition", "etaSeconds"]  # the model's order
    position = position_of(RunInfo(run_id, FULL_JOB, "STARTED"))
    model = WorkflowState(
        workflowId=rid,
        status=position.status,
        progress=position.progress,
        currentStep=position.current_step,
        queuePosition=3,
        etaSeconds=body["etaSeconds"],
    )
    assert encode_progress(rid, position, 3, body["etaSeconds"]) == encode_state(model)


def test_a_finished_body_is_encoded_once(
    client: TestClient, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    encodes: list[str] = []
    real = state_bodies.encode_state

    def counted(state: WorkflowState) -> bytes:
        encodes.append(state.status)
        return real(state)

    monkeypatch.setattr(reading, "encode_state", counted)
    rids = [_rid() for _ in range(3)]
    _completed(client, instance, rids[0])
    _run(instance, rids[1], dg.DagsterRunStatus.FAILURE)
    _run(instance, rids[2], dg.DagsterRunStatus.CANCELED)
    for rid in rids:
        first = client.get(f"/workflow/{rid}")
        assert all(client.get(f"/workflow/{rid}").content == first.content for _ in range(4))
    assert sorted(encodes) == ["CANCELLED", "COMPLETED", "FAILED"]


def test_a_running_get_is_answered_on_the_event_loop(
    client: TestClient, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the status cache holds the running run, GET neither reads nor leaves the event loop."""
    rid = _rid()
    _run(instance, rid, dg.DagsterRunStatus.STARTED)
    client.app.state.settings.status_cache_seconds = 60.0  # type: ignore[attr-defined]  (no expiry in the test)
    first = client.get(f"/workflow/{rid}")  # read on a thread, kept by the status cache
    slow: list[str] = []
    real = reading.workflow_body
    monkeypatch.setattr(reading, "workflow_body", lambda *args: slow.append(args[0]) or real(*args))
    assert all(client.get(f"/workflow/{rid}").content == first.content for _ in range(5))
    assert slow == []


def test_another_caller_gets_404_from_a_kept_body(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    with gateway_client(tmp_path, status_source="storage", gateway_api_keys=",".join(KEYS.values())) as client:
        owner = caller_id(KEYS["alpha"], client.app.state.settings.gateway_secret)  # type: ignore[attr-defined]
        done, running = _rid(), _rid()
        _completed(client, instance, done, owner=owner)
        _run(instance, running, dg.DagsterRunStatus.STARTED, owner=owner)
        for rid in (done, running):
            for _ in range(2):  # the second: answered from what was kept
                assert client.get(f"/workflow/{rid}", headers={"X-API-Key": KEYS["alpha"]}).status_code == 200
            other = client.get(f"/workflow/{rid}", headers={"X-API-Key": KEYS["beta"]})
            assert other.status_code == 404, other.text


def test_a_removed_request_is_410_though_its_body_was_kept(client: TestClient, instance: dg.DagsterInstance) -> None:
    rid = _rid()
    _completed(client, instance, rid)
    for _ in range(2):
        assert client.get(f"/workflow/{rid}").status_code == 200
    assert len(client.app.state.finished_bodies) == 1  # type: ignore[attr-defined]
    report = remove_requests(instance, client.app.state.store, [rid], datetime.now(UTC))  # type: ignore[attr-defined]
    assert report.requests_removed == 1
    gone = client.get(f"/workflow/{rid}")
    assert gone.status_code == 410, gone.text


def test_kept_bodies_are_bounded_in_bytes_and_age() -> None:
    clock = [0.0]
    bodies = FinishedBodies(max_bytes=100, max_age=60.0, clock=lambda: clock[0])
    for i in range(5):
        bodies.put(f"run-{i}", bytes(30))
    assert bodies.size <= 100 and len(bodies) == 3
    assert bodies.get("run-0") is None and bodies.get("run-4") == bytes(30)
    bodies.get("run-2")  # answered: now the newest
    bodies.put("run-5", bytes(30))
    assert bodies.get("run-3") is None and bodies.get("run-2") is not None
    bodies.put("huge", bytes(101))
    assert bodies.get("huge") is None
    clock[0] = 60.0  # as old as its signed URLs may be let get: encoded again
    assert bodies.get("run-2") is None and bodies.size == 60


def test_a_kept_body_is_younger_than_half_the_url_lifetime(tmp_path: Path) -> None:
    with gateway_client(tmp_path, result_url_minutes=4, state_body_cache_seconds=300.0) as client:
        settings: Any = client.app.state.settings  # type: ignore[attr-defined]
        assert settings.state_body_max_age() == 120.0
