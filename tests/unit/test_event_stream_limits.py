"""Event streams: a cap per caller and in total, and one status poll per workflow however many listen.

The app runs under a real uvicorn on loopback (TestClient buffers a whole response, and these
streams do not end by themselves), with Dagster replaced by a double of DagsterRuns that counts
the status reads. No fixed sleeps: every wait polls a condition against a deadline.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from gateway.dagster_api.models import RunInfo
from gateway.main import create_app
from gateway.security import caller_id
from gateway.settings import GatewaySettings
from jewel_dagster.contract import FULL_JOB, OWNER_TAG, PARTITION_TAG
from tests.support.answers import assert_refused, no_workflow
from tests.support.e2e_stack import free_port
from tests.support.servers import app_in_thread

ONE = "jewelry-gen-00000000-0000-0000-0000-000000000001"
TWO = "jewelry-gen-00000000-0000-0000-0000-000000000002"
KEYS = {"alpha": "alpha-key", "beta": "beta-key"}


class CountingRuns:
    """What the event stream and GET ask of DagsterRuns, answered from memory, status reads counted."""

    def __init__(self, owners: dict[str, str]) -> None:
        self.runs = {
            wid: RunInfo(f"run-{wid[-4:]}", FULL_JOB, "STARTED", [], {OWNER_TAG: owner, PARTITION_TAG: wid})
            for wid, owner in owners.items()
        }
        self.polls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def latest_run_cached(self, request_id: str) -> RunInfo | None:
        with self._lock:
            self.polls[request_id] += 1
            return self.runs.get(request_id)

    def latest_run(self, request_id: str) -> RunInfo | None:
        return self.runs.get(request_id)

    def remembered_run(self, request_id: str) -> RunInfo | None:
        return None  # GET asks latest_run_cached, which counts

    def first_run_tagged(self, tags: dict[str, str]) -> RunInfo | None:
        return None

    def count(self, request_id: str) -> int:
        with self._lock:
            return self.polls[request_id]

    def close(self) -> None:
        pass


SECRET = "a-secret-for-the-stream-tests"


@contextmanager
def served(tmp_path: Path, runs: CountingRuns, **overrides: Any) -> Iterator[tuple[FastAPI, str]]:
    settings = GatewaySettings(
        local_blob_root=str(tmp_path / "blobs"),
        dagster_port=free_port(),
        gateway_api_keys=",".join(KEYS.values()),
        gateway_secret=SECRET,
        rate_limit_per_minute=100_000,
        **overrides,
    )
    app = create_app(settings)
    with app_in_thread(app) as url:
        app.state.runs = runs  # the lifespan built a real client; Dagster is a double here
        yield app, url


def owners(*pairs: tuple[str, str]) -> dict[str, str]:
    return {wid: caller_id(KEYS[who], SECRET) for wid, who in pairs}


def until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Stream:
    """One open event stream, read an event at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()

    def next_event(self) -> tuple[str, dict[str, Any]]:
        fields: dict[str, str] = {}
        for line in self._lines:
            if not line:
                if "data" in fields:
                    return fields["event"], json.loads(fields["data"])
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        raise AssertionError("the stream ended without another event")


def open_stream(stack: ExitStack, client: httpx.Client, workflow_id: str, who: str) -> httpx.Response:
    return stack.enter_context(
        client.stream("GET", f"/workflow/{workflow_id}/events", headers={"X-API-Key": KEYS[who]})
    )


def test_streams_are_capped_per_caller_with_429_and_retry_after(tmp_path: Path) -> None:
    runs = CountingRuns(owners((ONE, "alpha"), (TWO, "beta")))
    with served(tmp_path, runs, event_streams_per_caller=3, event_streams_total=100) as (_, url):
        with httpx.Client(base_url=url, timeout=10) as client, ExitStack() as stack:
            opened = [open_stream(stack, client, ONE, "alpha") for _ in range(3)]
            assert [r.status_code for r in opened] == [200, 200, 200]
            refused = open_stream(stack, client, ONE, "alpha")
            assert refused.status_code == 429
            refused.read()
            assert int(refused.headers["Retry-After"]) >= 1
            assert "event streams" in refused.json()["detail"]
            # Per caller: another caller still gets its stream.
            assert open_stream(stack, client, TWO, "beta").status_code == 200


def test_streams_are_capped_in_total_and_a_closed_stream_frees_its_place(tmp_path: Path) -> None:
    runs = CountingRuns(owners((ONE, "alpha"), (TWO, "beta")))
    with served(tmp_path, runs, event_streams_per_caller=3, event_streams_total=4) as (_, url):
        with httpx.Client(base_url=url, timeout=10) as client, ExitStack() as stack:
            first = open_stream(stack, client, ONE, "alpha")
            assert [open_stream(stack, client, ONE, "alpha").status_code for _ in range(2)] == [200, 200]
            assert open_stream(stack, client, TWO, "beta").status_code == 200
            refused = open_stream(stack, client, TWO, "beta")  # beta has 1 of its 3, but 4 are open
            assert refused.status_code == 429
            refused.read()
            assert "event streams" in refused.json()["detail"]
            assert int(refused.headers["Retry-After"]) >= 1
            first.close()  # the server notices the disconnect and frees the place

            def beta_gets_one() -> bool:
                with client.stream("GET", f"/workflow/{TWO}/events", headers={"X-API-Key": KEYS["beta"]}) as r:
                    return r.status_code == 200

            until(beta_gets_one, what="a freed place")


def test_refused_and_foreign_streams_keep_their_answers(tmp_path: Path) -> None:
    runs = CountingRuns(owners((ONE, "alpha")))
    with served(tmp_path, runs, event_streams_per_caller=1, event_streams_total=10) as (_, url):
        with httpx.Client(base_url=url, timeout=10) as client:
            # Another caller's workflow is 404, and a 404 holds no place under the cap.
            for _ in range(3):
                foreign = client.get(f"/workflow/{ONE}/events", headers={"X-API-Key": KEYS["beta"]})
                assert_refused(foreign, 404, no_workflow(ONE))
            with client.stream("GET", f"/workflow/{ONE}/events", headers={"X-API-Key": KEYS["alpha"]}) as ok:
                assert ok.status_code == 200


def test_many_streams_on_one_workflow_share_one_status_poll(tmp_path: Path) -> None:
    listeners = 20
    poll_seconds = 0.05
    runs = CountingRuns(owners((ONE, "alpha")))
    with served(
        tmp_path, runs, event_poll_seconds=poll_seconds, event_streams_per_caller=50, event_streams_total=50
    ) as (app, url):
        limits = httpx.Limits(max_connections=listeners + 5)
        with httpx.Client(base_url=url, timeout=10, limits=limits) as client, ExitStack() as stack:
            streams = [Stream(open_stream(stack, client, ONE, "alpha")) for _ in range(listeners)]
            for stream in streams:
                assert stream.next_event() == (
                    "progress",
                    {"workflowId": ONE, "status": "RUNNING", "progress": 5, "currentStep": "UPLOADING_IMAGE"},
                )
            # Every listener is in; from here on only the shared poll reads the status.
            before, started = runs.count(ONE), time.monotonic()
            until(lambda: runs.count(ONE) >= before + 10, what="ten more status polls")
            polls, elapsed = runs.count(ONE) - before, time.monotonic() - started
            # One poll a tick (plus one in flight at each end), not one per listener (~20 a tick).
            assert polls <= elapsed / poll_seconds + 2, (polls, elapsed)

            # A change reaches every listener, then the final event equals GET's body.
            runs.runs[ONE] = RunInfo("run-0001", FULL_JOB, "CANCELED", [], runs.runs[ONE].tags)
            body = client.get(f"/workflow/{ONE}", headers={"X-API-Key": KEYS["alpha"]}).json()
            assert body["status"] == "CANCELLED"
            for stream in streams:
                assert stream.next_event() == ("final", body)
        # The last listener left: its watcher task ends, so nothing polls any more.
        until(lambda: not app.state.event_streams.watched(), what="the watcher to stop")
