"""What a retry of an Idempotency-Key on another replica is told, and the heartbeat it trusts.

A claim is taken over once its gateway's heartbeat is START_TAKEOVER_SECONDS old
(gateway/workflows/idempotency.py), so a live gateway must keep beating whatever its sweeps do,
and "was the key launched?" must never take "cannot tell" for "no"."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import cast

import pytest

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.models import RunInfo
from gateway.settings import GatewaySettings
from gateway.starts import PendingStart, StartLauncher, write_start
from gateway.workflows.idempotency import key_launched
from jewel_dagster.contract import IDEMPOTENCY_TAG, PARTITION_TAG
from jewel_dagster.resources.blob_store import BlobStoreError, LocalBlobStore
from tests.support.gateway_client import FakeDagster, poll_until

CLAIMED = "jewelry-gen-00000000-0000-4000-8000-00000000000a"  # the dead claimant's id
TAKEN = "jewelry-gen-00000000-0000-4000-8000-00000000000b"  # the id of the takeover's launch


class TaggedRun(FakeDagster):
    def __init__(self, run: RunInfo | None) -> None:
        super().__init__()
        self.run = run

    def newest_run_tagged(self, tags: dict[str, str]) -> RunInfo | None:
        return self.run if self.run is not None and tags.items() <= self.run.tags.items() else None


def test_a_key_launched_by_a_takeover_answers_the_takeovers_workflow(tmp_path: Path) -> None:
    """The claim names the dead claimant's id; the run was launched by the replica that took
    over, under its own id: a retry gets the id GET can answer, not one that never ran."""
    store = LocalBlobStore(root=str(tmp_path))
    run = RunInfo("r1", "full", "STARTED", tags={IDEMPOTENCY_TAG: "d1", PARTITION_TAG: TAKEN})
    found = key_launched(cast(DagsterRuns, TaggedRun(run)), store, CLAIMED, "d1")
    assert found is not None and found.workflowId == TAKEN
    assert key_launched(cast(DagsterRuns, TaggedRun(None)), store, CLAIMED, "d1") is None
    write_start(
        store,
        PendingStart(CLAIMED, "alice", "full", {}, tags={IDEMPOTENCY_TAG: "d1"}, gateway="g"),
    )
    started = key_launched(cast(DagsterRuns, TaggedRun(None)), store, CLAIMED, "d1")
    assert started is not None and started.workflowId == CLAIMED  # its pending start carries the key


class UnreachableStore(LocalBlobStore):
    def get_path(self, path: str) -> bytes:
        raise BlobStoreError("the store does not answer")


def test_a_store_that_does_not_answer_is_not_taken_for_no_launch(tmp_path: Path) -> None:
    """Read as "no pending start", a dead claimant's record hidden by a store error would let the
    retry launch while another gateway's sweep launches the record: two runs."""
    with pytest.raises(BlobStoreError):
        key_launched(cast(DagsterRuns, TaggedRun(None)), UnreachableStore(root=str(tmp_path)), CLAIMED, "d1")


def test_a_gateway_beats_while_its_sweep_is_stuck(tmp_path: Path) -> None:
    """The first sweep after a restart reads every retained record; a slow store can make it
    longer than START_TAKEOVER_SECONDS. The heartbeat must not wait for it, or the gateway's own
    claims are taken over while it launches (two runs for one key)."""
    settings = GatewaySettings(local_blob_root=str(tmp_path), start_takeover_seconds=0.6)
    store = LocalBlobStore(root=str(tmp_path))
    stuck, sweeping = threading.Event(), threading.Event()
    claimant = StartLauncher(settings, store, lambda: cast(DagsterRuns, FakeDagster()))
    other = StartLauncher(settings, store, lambda: cast(DagsterRuns, FakeDagster()))

    def slow_sweep() -> int:
        sweeping.set()
        stuck.wait(10.0)
        return 0

    claimant.sweep = slow_sweep  # type: ignore[method-assign]
    claimant.start()
    try:
        me = claimant.present()
        poll_until(sweeping.is_set, bool, timeout=5.0)
        # Three takeover times with the sweep stuck: the heartbeat stays fresh all along.
        checks = [other.alive(me)]
        for _ in range(6):
            threading.Event().wait(0.3)
            checks.append(other.alive(me))
        assert all(checks), checks
    finally:
        stuck.set()
        claimant.stop(drain_seconds=0.1)
