"""GET /workflow/{id} never waits on Dagster's storage past STATUS_READ_DEADLINE_SECONDS.

The chaos soak pauses PostgreSQL for 10 s (SIGSTOP): a poll that memory could not answer waited
for the whole pause, and the soak's GET p99 bound (5 s) failed in CI. A frontend would rather be
told to retry."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from gateway.bounded_reads import BoundedReads
from gateway.dagster_api.models import RunInfo
from tests.support.gateway_client import FakeDagster, gateway_with_fake_dagster, poll_until

WORKFLOW = "jewelry-gen-12345678-1234-1234-1234-123456789abc"
HELD_AT_MOST = 10.0  # the stalled read gives up by itself after this, should the test fail first


class StalledStorage(FakeDagster):
    """Dagster whose run reads wait until released, as while PostgreSQL is paused."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.reads = 0

    def latest_run(self, request_id: str) -> RunInfo | None:
        with self.lock:
            self.reads += 1
        self.released.wait(HELD_AT_MOST)
        return None

    latest_run_cached = latest_run


def test_a_poll_on_a_stalled_storage_is_told_to_retry_within_the_deadline(tmp_path: Path) -> None:
    with gateway_with_fake_dagster(tmp_path, status_read_deadline_seconds=0.5) as (client, _):
        stalled = StalledStorage()
        client.app.state.runs = stalled  # type: ignore[attr-defined]
        try:
            began = time.monotonic()
            answer = client.get(f"/workflow/{WORKFLOW}")
            waited = time.monotonic() - began
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "2"
            assert "retry" in answer.json()["detail"]
            assert stalled.reads == 1
            assert waited < HELD_AT_MOST / 2, f"answered after {waited:.1f} s"
        finally:
            stalled.released.set()
        # Once the storage answers again, so does GET (no run, no start: 404).
        assert client.get(f"/workflow/{WORKFLOW}").status_code == 404


def test_past_the_limit_of_stalled_reads_a_poll_starts_no_read(tmp_path: Path) -> None:
    """Each read a GET gave up on still holds a thread until the storage answers; past the limit
    a poll answers 503 at once instead of leaving one more behind."""
    with gateway_with_fake_dagster(tmp_path, status_read_deadline_seconds=0.3) as (client, _):
        stalled = StalledStorage()
        client.app.state.runs = stalled  # type: ignore[attr-defined]
        client.app.state.state_reads = BoundedReads(limit=2)  # type: ignore[attr-defined]
        try:
            answers = [client.get(f"/workflow/{WORKFLOW}").status_code for _ in range(4)]
            assert answers == [503] * 4
            assert stalled.reads == 2, "a poll past the limit started a read"
        finally:
            stalled.released.set()
        poll_until(lambda: client.app.state.state_reads.stalled, lambda n: n == 0)  # type: ignore[attr-defined]
        assert client.get(f"/workflow/{WORKFLOW}").status_code == 404
