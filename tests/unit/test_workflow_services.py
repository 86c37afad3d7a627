"""The workflow service layer (gateway/workflows/) called directly: no app, no HTTP client.

What the routes answer is decided here; each case is one function call on a fake Dagster and a
local blob store, checked by the HTTPException's status and fixed detail.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi import HTTPException

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.models import RunInfo
from gateway.schemas import StartRequest, StartResponse
from gateway.starts import PendingStart, write_start
from gateway.workflows import cancel, idempotency, ownership, tombstones
from gateway.workflows.launch import drop_webhook_url, store_strokes
from jewel_dagster.contract import OWNER_TAG, PARTITION_TAG, WEBHOOK_KEY_TAG
from jewel_dagster.request_inputs import BRUSH_STROKES
from jewel_dagster.resources.blob_store import LocalBlobStore
from jewel_dagster.storage_layout import tombstone_path, webhook_url_path
from tests.support.gateway_client import FakeDagster, start_body

WORKFLOW = "jewelry-gen-00000000-0000-4000-8000-000000000001"


class OneRun(FakeDagster):
    """A Dagster that knows one run of WORKFLOW, owned by `owner`."""

    def __init__(self, owner: str, status: str = "STARTED") -> None:
        super().__init__()
        self.run = RunInfo("run-1", "full", status, tags={OWNER_TAG: owner, PARTITION_TAG: WORKFLOW})

    def latest_run(self, request_id: str) -> RunInfo | None:
        return self.run if request_id == WORKFLOW else None

    latest_run_cached = latest_run


def _runs(fake: FakeDagster) -> DagsterRuns:
    return cast(DagsterRuns, fake)


def test_ownership_answers_another_callers_workflow_like_an_unknown_one() -> None:
    runs = _runs(OneRun(owner="alice"))
    assert ownership.owned_run(runs, WORKFLOW, "alice").run_id == "run-1"
    for caller, workflow in (("bob", WORKFLOW), ("alice", "jewelry-gen-nope")):
        with pytest.raises(HTTPException) as refused:
            ownership.owned_run(runs, workflow, caller)
        assert (refused.value.status_code, refused.value.detail) == (404, f"no workflow {workflow!r}")


def test_a_pending_start_is_its_owners_before_the_run_exists(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path))
    write_start(
        store, PendingStart(workflowId=WORKFLOW, owner="alice", job="full", runConfig={}, tags={}, gateway="g1")
    )
    found = ownership.owned_run_or_start(_runs(FakeDagster()), store, WORKFLOW, "alice")
    assert isinstance(found, PendingStart) and found.owner == "alice"
    with pytest.raises(HTTPException) as refused:
        ownership.owned_run_or_start(_runs(FakeDagster()), store, WORKFLOW, "bob")
    assert refused.value.status_code == 404


def test_a_tombstone_is_410_for_its_owner_only(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path))
    assert tombstones.removed(store, WORKFLOW, "alice") is None  # nothing removed: no answer
    store.put(
        tombstone_path(WORKFLOW), json.dumps({"removedAt": "2026-01-02T03:04:05+00:00", "owner": "alice"}).encode()
    )
    gone = tombstones.removed(store, WORKFLOW, "alice")
    assert gone is not None and gone.status_code == 410 and "was removed on 2026-01-02" in str(gone.detail)
    assert tombstones.removed(store, WORKFLOW, "bob") is None


class Gateways:
    """Replicas' presence (gateway/starts.py's heartbeats) as a set of the living ones."""

    def __init__(self, me: str, alive: set[str]) -> None:
        self.me, self.living = me, alive

    def present(self) -> str:
        return self.me

    def alive(self, gateway_id: str) -> bool:
        return gateway_id in self.living


class LaunchedRuns(OneRun):
    """OneRun (WORKFLOW's earlier run) plus each run launched here, found by its tags."""

    def __init__(self) -> None:
        super().__init__(owner="alice", status="SUCCESS")
        self.tagged: list[RunInfo] = []

    def launched(self, workflow_id: str, tags: dict[str, str]) -> StartResponse:
        self.tagged.append(
            RunInfo(f"run-{len(self.tagged) + 2}", "generate", "STARTED", tags={**tags, PARTITION_TAG: workflow_id})
        )
        return StartResponse(workflowId=workflow_id, status="RUNNING")

    def newest_run_tagged(self, tags: dict[str, str]) -> RunInfo | None:
        found = [run for run in self.tagged if tags.items() <= run.tags.items()]
        return found[-1] if found else None


def test_an_idempotency_key_launches_once_and_refuses_another_request(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path))
    fake = LaunchedRuns()
    runs, both = _runs(fake), Gateways("a", {"a", "b"})
    launched: list[dict[str, str]] = []

    def launch(tags: dict[str, str]) -> StartResponse:
        launched.append(tags)
        return fake.launched(WORKFLOW, tags)

    body = StartRequest.model_validate(start_body())
    first = idempotency.idempotent(runs, store, "alice", "key-1", body, "full", WORKFLOW, launch, both)
    again = idempotency.idempotent(runs, store, "alice", "key-1", body, "full", "jewelry-gen-other", launch, both)
    assert first == again and len(launched) == 1  # the run tagged with the key answers the retry
    other = StartRequest.model_validate(start_body(maskPoints=[{"x": 0.1, "y": 0.1, "label": 1}]))
    with pytest.raises(HTTPException) as reused:
        idempotency.idempotent(runs, store, "alice", "key-1", other, "full", "jewelry-gen-other", launch, both)
    assert reused.value.status_code == 422
    with pytest.raises(HTTPException) as bad:
        idempotency.idempotent(runs, store, "alice", "a key", body, "full", WORKFLOW, launch, both)
    assert (bad.value.status_code, bad.value.detail) == (400, "Idempotency-Key: 1 to 200 printable characters")


def test_a_key_retried_while_its_launch_is_under_way_is_told_to_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry reaches another replica while the claimant (alive) has not launched yet: 503
    with Retry-After, not a workflow id that no run or start stands behind."""
    monkeypatch.setattr(idempotency, "stripe", lambda key: threading.Lock())  # replicas share no locks
    store = LocalBlobStore(root=str(tmp_path))
    fake = LaunchedRuns()
    runs, body = _runs(fake), StartRequest.model_validate(start_body())
    retried: list[HTTPException] = []

    def launch_on_a(tags: dict[str, str]) -> StartResponse:
        with pytest.raises(HTTPException) as busy:  # b's retry, while a is mid-launch
            idempotency.idempotent(
                runs, store, "alice", "k", body, "generate", WORKFLOW, fail_launch, Gateways("b", {"a", "b"})
            )
        retried.append(busy.value)
        return fake.launched(WORKFLOW, tags)

    def fail_launch(tags: dict[str, str]) -> StartResponse:
        raise AssertionError("launched twice")

    idempotency.idempotent(
        runs, store, "alice", "k", body, "generate", WORKFLOW, launch_on_a, Gateways("a", {"a", "b"})
    )
    assert retried[0].status_code == 503 and (retried[0].headers or {}).get("Retry-After") == "1"
    # Once a launched, the same retry answers a's workflow.
    again = idempotency.idempotent(
        runs, store, "alice", "k", body, "generate", WORKFLOW, fail_launch, Gateways("b", {"a", "b"})
    )
    assert again.workflowId == WORKFLOW and len(fake.tagged) == 1


def test_a_key_whose_gateway_died_before_launching_is_launched_by_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generate continuing WORKFLOW (which has an earlier run): its gateway claimed the key and
    died before launching. The retry on the other replica launches once, though the workflow
    has runs (the claim used to count them as this launch and answer 200 without any run)."""
    monkeypatch.setattr(idempotency, "stripe", lambda key: threading.Lock())  # replicas share no locks
    store = LocalBlobStore(root=str(tmp_path))
    fake = LaunchedRuns()
    runs, body = _runs(fake), StartRequest.model_validate(start_body())
    living = {"a", "b"}
    answers: list[StartResponse] = []

    def dies_on_a(tags: dict[str, str]) -> StartResponse:
        living.discard("a")  # a's heartbeat stops: it was killed before its launch
        answers.append(
            idempotency.idempotent(
                runs, store, "alice", "k", body, "generate", WORKFLOW, launch_on_b, Gateways("b", living)
            )
        )
        return answers[-1]

    def launch_on_b(tags: dict[str, str]) -> StartResponse:
        return fake.launched(WORKFLOW, tags)

    idempotency.idempotent(runs, store, "alice", "k", body, "generate", WORKFLOW, dies_on_a, Gateways("a", living))
    assert answers[0].workflowId == WORKFLOW and len(fake.tagged) == 1  # b launched it, once
    again = idempotency.idempotent(
        runs, store, "alice", "k", body, "generate", WORKFLOW, launch_on_b, Gateways("b", living)
    )
    assert again.workflowId == WORKFLOW and len(fake.tagged) == 1


def test_a_launch_that_did_not_happen_leaves_no_blobs(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path))
    stroke: dict[str, Any] = {"points": [{"x": 0.5, "y": 0.5}], "mode": "add", "size": 20}
    config = store_strokes(store, WORKFLOW, BRUSH_STROKES.validate_python([stroke]))
    assert store.exists(config["strokes_uri"])
    store.put(webhook_url_path("k1"), b"{}")
    drop_webhook_url(store, {WEBHOOK_KEY_TAG: "k1"})
    assert not store.exists_path(webhook_url_path("k1"))


def test_cancelling_an_ended_workflow_is_409(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path))
    runs = _runs(OneRun(owner="alice", status="SUCCESS"))
    with pytest.raises(HTTPException) as ended:
        cancel.cancel(runs, store, cast(Any, None), WORKFLOW, "alice")
    assert (ended.value.status_code, ended.value.detail) == (409, f"workflow {WORKFLOW} already ended: COMPLETED")
