"""Two gateway replicas (two apps on one blob store) behave as one: one launch per Idempotency-Key.

Each replica gets its own fake Dagster; a run launched through either is found by its tags
through both, as Dagster's run storage answers every replica. While a launch is in flight,
looking the key up in Dagster cannot tell two replicas apart: only the claim in the shared blob
store can (tests/unit/test_workflow_services.py holds that window open).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.claims import claim, release
from gateway.dagster_api.models import RunInfo
from jewel_dagster.contract import PARTITION_TAG
from jewel_dagster.resources.blob_store import LocalBlobStore
from tests.support.gateway_client import (
    FakeDagster,
    gateway_with_fake_dagster,
    poll_until,
    settled_starts,
    start_body,
)


class OneDagster(FakeDagster):
    """A replica's view of the Dagster both launch on: runs launched through any view, by tags."""

    def __init__(self, launched: list[RunInfo]) -> None:
        super().__init__()
        self.launched = launched

    def launch(
        self, job_name: str, request_id: str, run_config: dict[str, Any], tags: dict[str, str] | None = None
    ) -> str:
        run_id = f"{id(self)}-{super().launch(job_name, request_id, run_config, tags)}"
        self.launched.append(RunInfo(run_id, job_name, "QUEUED", tags={**(tags or {}), PARTITION_TAG: request_id}))
        return run_id

    def newest_run_tagged(self, tags: dict[str, str]) -> RunInfo | None:
        found = [run for run in self.launched if tags.items() <= run.tags.items()]
        return found[-1] if found else None


@contextmanager
def two_replicas(tmp_path: Path, **overrides: Any) -> Iterator[list[tuple[TestClient, FakeDagster]]]:
    launched: list[RunInfo] = []
    with ExitStack() as stack:
        replicas = [stack.enter_context(gateway_with_fake_dagster(tmp_path, **overrides)) for _ in range(2)]
        views = []
        for client, _ in replicas:
            view = OneDagster(launched)
            client.app.state.runs = view  # type: ignore[attr-defined]
            views.append((client, view))
        yield views


def test_a_key_retried_on_the_other_replica_launches_once(tmp_path: Path) -> None:
    with two_replicas(tmp_path) as [(a, fake_a), (b, fake_b)]:
        launchers = [a.app.state.launcher, b.app.state.launcher]  # type: ignore[attr-defined]
        body, key = start_body(), {"Idempotency-Key": "order-17"}
        first = a.post("/workflow/preprocess", json=body, headers=key)
        again = b.post("/workflow/preprocess", json=body, headers=key)
        assert first.status_code == again.status_code == 200, (first.text, again.text)
        assert again.json() == first.json()
        poll_until(lambda: len(fake_a.launches) + len(fake_b.launches), lambda n: n > 0)  # background
        # Both answered, so whatever each queued is in its launcher: once both are idle, every
        # launch there will be was made (no takeover: both heartbeats are fresh for 30 s).
        settled_starts(launchers)
        assert len(fake_a.launches) + len(fake_b.launches) == 1, (fake_a.launches, fake_b.launches)
        other = b.post(
            "/workflow/preprocess", json=start_body(maskPoints=[{"x": 0.1, "y": 0.1, "label": 1}]), headers=key
        )
        assert other.status_code == 422, other.text


def test_a_failed_launch_frees_the_key_for_a_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A launch inside the call (START_IN_BACKGROUND=false) that fails answers 503 and frees the key."""
    with two_replicas(tmp_path, start_in_background=False) as [(a, fake_a), (b, fake_b)]:
        monkeypatch.setattr(fake_a, "ping", lambda timeout=None: True)

        def broken(*args: object, **kwargs: object) -> str:
            from gateway.dagster_api.errors import DagsterUnavailable

            raise DagsterUnavailable("down")

        monkeypatch.setattr(fake_a, "launch", broken)
        key = {"Idempotency-Key": "order-18"}
        assert a.post("/workflow/preprocess", json=start_body(), headers=key).status_code == 503
        retried = b.post("/workflow/preprocess", json=start_body(), headers=key)
        assert retried.status_code == 200, retried.text
        assert len(fake_b.launches) == 1


def test_a_stale_claim_whose_work_never_happened_is_taken_over(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path))
    clock = [1000.0]
    first = claim(store, "x", {"by": "a"}, stale_after=60, settled=lambda held: False, now=lambda: clock[0])
    assert first.won
    held = claim(store, "x", {"by": "b"}, stale_after=60, settled=lambda held: False, now=lambda: clock[0] + 59)
    assert not held.won and held.data["by"] == "a"
    clock[0] += 61
    taken = claim(store, "x", {"by": "b"}, stale_after=60, settled=lambda held: False, now=lambda: clock[0])
    assert taken.won and taken.path.endswith(".1.json")
    release(store, taken)
    again = claim(store, "x", {"by": "c"}, stale_after=60, settled=lambda held: False, now=lambda: clock[0])
    assert again.won and again.path.endswith(".2.json")


def test_a_claim_whose_claimant_died_is_taken_over_before_its_stale_age(tmp_path: Path) -> None:
    """A gateway killed mid-launch leaves its claim; once its heartbeat stops (`abandoned`), the
    next claimant takes it over at once, unless the work happened (`settled`)."""
    store = LocalBlobStore(root=str(tmp_path))
    living = {"a", "b"}

    def abandoned(held: dict[str, Any]) -> bool:
        return held["gateway"] not in living

    assert claim(store, "x", {"gateway": "a"}, stale_after=300, settled=lambda held: False, abandoned=abandoned).won
    held = claim(store, "x", {"gateway": "b"}, stale_after=300, settled=lambda held: False, abandoned=abandoned)
    assert not held.won and held.data["gateway"] == "a"  # a lives: its claim stands
    living.discard("a")
    done = claim(store, "x", {"gateway": "b"}, stale_after=300, settled=lambda held: True, abandoned=abandoned)
    assert not done.won  # a died after its work happened: nothing to take over
    taken = claim(store, "x", {"gateway": "b"}, stale_after=300, settled=lambda held: False, abandoned=abandoned)
    assert taken.won and taken.path.endswith(".1.json")


def test_a_replica_never_answers_an_ended_run_from_its_cache(tmp_path: Path) -> None:
    """Replica A saw the request COMPLETED; replica B then launched a generate on it. A's next GET
    must show the new run, though A's cache never heard of it."""
    from gateway.dagster_api.client import DagsterRuns
    from gateway.dagster_api.models import RunInfo
    from gateway.settings import GatewaySettings

    runs = DagsterRuns(GatewaySettings(local_blob_root=str(tmp_path), status_cache_seconds=60.0))
    answers = [
        RunInfo("r1", "jewelry_preprocess", "SUCCESS", [], {}),
        RunInfo("r2", "jewelry_generate", "STARTED", [], {}),
    ]
    runs.latest_run = lambda request_id: answers[0]  # type: ignore[method-assign]
    assert runs.latest_run_cached("w").run_id == "r1"  # type: ignore[union-attr]
    runs.latest_run = lambda request_id: answers[1]  # type: ignore[method-assign]
    assert runs.latest_run_cached("w").run_id == "r2"  # type: ignore[union-attr]
    runs.latest_run = lambda request_id: answers[0]  # type: ignore[method-assign]
    assert runs.latest_run_cached("w").run_id == "r2"  # type: ignore[union-attr]  (a running run is cached)
    runs.close()
