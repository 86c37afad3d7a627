"""START_IN_BACKGROUND (issue 19): a start call stores the upload and a pending start and answers
at once; the gateway's launcher adds the partition and launches the run.

Dagster is a double that keeps the runs it launched (so GET, cancel and the launch-tag checks see
them) and can hold a launch at a gate or refuse to answer. Two apps on one blob store stand for
two gateway replicas.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from gateway.dagster_api.errors import DagsterError, DagsterUnavailable
from gateway.dagster_api.models import RunInfo
from gateway.security import ANONYMOUS
from gateway.starts import PendingStart, mark_cancelled, read_start, state_of_start, write_start
from gateway.webhooks import caller_secret
from gateway.workflows import idempotency
from jewel_dagster.contract import FULL_JOB, LAUNCH_TAG, OWNER_TAG, PARTITION_TAG, WILL_RETRY_TAG
from jewel_dagster.resources.blob_store import LocalBlobStore
from jewel_dagster.storage_layout import pending_start_path as pending_path
from jewel_dagster.storage_layout import start_cancel_path
from tests.support.answers import assert_refused, no_workflow
from tests.support.gateway_client import (
    FakeDagster,
    gateway_client,
    poll_until,
    settled_starts,
    start_body,
    stored_blobs,
    sweeps_of,
)
from tests.support.receivers import webhook_receiver

FAST = {"start_takeover_seconds": 0.3, "start_give_up_seconds": 0.3}


class RecordingDagster(FakeDagster):
    """A Dagster that keeps what it launched; `gate` holds launches, `down` refuses every call."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[str, RunInfo] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.down = False
        self.refuse_terminates = 0  # terminates refused before one takes (a STARTING run)
        self.stopped_by_another = False  # each terminate finds the run just CANCELED by another's
        self.launcher_terminates_after = 0.0  # seconds the launcher's terminate waits (the route's goes first)
        self.launched_status = "QUEUED"  # what a launched run is when first seen
        self.lose_launch_answer = False  # the run is launched, then Dagster goes down before answering
        self.in_launch = threading.Event()
        self._lock = threading.Lock()

    def ping(self, timeout: float | None = 2.0) -> bool:
        return not self.down

    def launch(
        self, job_name: str, request_id: str, run_config: dict[str, Any], tags: dict[str, str] | None = None
    ) -> str:
        if self.down:
            raise DagsterUnavailable("down for the test")
        self.in_launch.set()
        assert self.gate.wait(20), "the test never opened the gate"
        if self.down:
            raise DagsterUnavailable("went down during the launch")
        with self._lock:
            self.launches.append((job_name, request_id))
            run = RunInfo(
                f"run-{len(self.launches)}",
                job_name,
                self.launched_status,
                [],
                {**(tags or {}), PARTITION_TAG: request_id},
            )
            self.runs[request_id] = run
        if self.lose_launch_answer:
            self.down = True
            raise DagsterUnavailable("went down before answering the launch")
        return run.run_id

    def latest_run(self, request_id: str) -> RunInfo | None:
        if self.down:
            raise DagsterUnavailable("down for the test")
        return self.runs.get(request_id)

    def latest_run_cached(self, request_id: str) -> RunInfo | None:
        return self.latest_run(request_id)

    def remembered_run(self, request_id: str) -> RunInfo | None:
        return None  # nothing in memory: GET asks latest_run_cached

    def newest_run_tagged(self, tags: dict[str, str]) -> RunInfo | None:
        found = [r for r in self.runs.values() if all(r.tags.get(k) == v for k, v in tags.items())]
        return found[-1] if found else None

    def terminate(self, run_id: str) -> None:
        if self.refuse_terminates > 0:  # as Dagster refuses a run that is still STARTING
            self.refuse_terminates -= 1
            raise DagsterError("Run is not in a state that can be terminated (STARTING)")
        if threading.current_thread().name.startswith("start-launcher"):
            time.sleep(self.launcher_terminates_after)
        if self.down:
            raise DagsterUnavailable("down for the test")
        with self._lock:
            for workflow, run in self.runs.items():
                if run.run_id == run_id:
                    if run.status in ("SUCCESS", "FAILURE", "CANCELED"):
                        raise DagsterError("Run is not in progress")  # as Dagster refuses an ended run
                    self.runs[workflow] = RunInfo(run.run_id, run.job_name, "CANCELED", [], run.tags)
                    if self.stopped_by_another:  # another terminate took first: this one is refused
                        raise DagsterError("Run is not in progress")


@contextmanager
def gateways(tmp_path: Path, count: int = 1, **overrides: Any) -> Iterator[tuple[list[TestClient], RecordingDagster]]:
    """`count` gateway replicas on one blob store, all in front of one RecordingDagster."""
    dagster = RecordingDagster()
    with ExitStack() as stack:
        clients = []
        for _ in range(count):
            client = stack.enter_context(gateway_client(tmp_path, **{**FAST, **overrides}))
            client.app.state.runs.close()  # type: ignore[attr-defined]
            client.app.state.runs = dagster  # type: ignore[attr-defined]
            clients.append(client)
        try:
            yield clients, dagster
        finally:
            dagster.gate.set()


def _pending_gauge(client: TestClient) -> float | None:
    return client.app.state.metrics.registry.get_sample_value("jewel_starts_pending")  # type: ignore[attr-defined]


def _pending_files(tmp_path: Path) -> list[str]:
    return [b for b in stored_blobs(tmp_path) if b.startswith("jewelry-uploads/starts/")]


def test_the_start_answers_at_once_and_reads_uploading_until_the_run_exists(tmp_path: Path) -> None:
    with gateways(tmp_path) as ([client], dagster):
        dagster.gate.clear()  # the webserver is busy: the launch hangs
        began = time.monotonic()
        started = client.post("/workflow/start", json=start_body())
        took = time.monotonic() - began
        assert started.status_code == 200, started.text
        assert started.json()["status"] == "RUNNING" and took < 5, (started.json(), took)
        workflow = started.json()["workflowId"]
        assert dagster.in_launch.wait(5)
        state = client.get(f"/workflow/{workflow}")
        assert state.json() == {
            "workflowId": workflow,
            "status": "RUNNING",
            "progress": 5,
            "currentStep": "UPLOADING_IMAGE",
        }, state.text
        with client.stream("GET", f"/workflow/{workflow}/events") as stream:
            lines = []
            for line in stream.iter_lines():
                lines.append(line)
                if line.startswith("data:"):
                    break
        assert "event: progress" in lines, lines
        assert json.loads(lines[-1][5:])["currentStep"] == "UPLOADING_IMAGE", lines
        assert _pending_gauge(client) == 1
        dagster.gate.set()
        poll_until(lambda: _pending_files(tmp_path), lambda files: files == [])
        assert dagster.launches == [(FULL_JOB, workflow)]
        run = dagster.runs[workflow]
        assert run.tags[OWNER_TAG] and run.tags[LAUNCH_TAG]
        assert client.get(f"/workflow/{workflow}").json()["status"] == "RUNNING"
        assert f"jewelry-uploads/requests/{workflow}/upload" in stored_blobs(tmp_path)
        # The launcher forgets the start just after it drops the record: the gauge follows.
        poll_until(lambda: _pending_gauge(client), lambda pending: pending == 0)


def test_dagster_down_at_the_start_still_answers_503_and_stores_nothing(tmp_path: Path) -> None:
    with gateways(tmp_path) as ([client], dagster):
        dagster.down = True
        refused = client.post("/workflow/start", json=start_body())
        assert refused.status_code == 503, refused.text
        assert stored_blobs(tmp_path) == []


def test_a_start_whose_launch_never_reaches_dagster_fails_and_keeps_nothing(tmp_path: Path) -> None:
    with gateways(tmp_path) as ([client], dagster):
        dagster.gate.clear()
        started = client.post("/workflow/preprocess", json=start_body(webhookUrl=None))
        workflow = started.json()["workflowId"]
        assert dagster.in_launch.wait(5)
        dagster.down = True  # Dagster goes away while the launch hangs: the launch fails
        dagster.gate.set()
        state = poll_until(lambda: client.get(f"/workflow/{workflow}").json(), lambda s: s["status"] != "RUNNING")
        assert state["status"] == "FAILED" and state["currentStep"] == "UPLOADING_IMAGE", state
        kept = [b for b in stored_blobs(tmp_path) if not b.startswith("jewelry-uploads/start-gateways/")]
        assert kept == [f"jewelry-uploads/starts/{workflow}.json"]  # the upload went
        assert dagster.launches == []
        dagster.down = False
        assert_refused(client.post(f"/workflow/{workflow}/cancel"), 409, f"workflow {workflow} already ended: FAILED")


def test_a_start_that_fails_before_its_run_exists_sends_its_failed_webhook(tmp_path: Path) -> None:
    """The webhook promises the final state; a start given up has no run for the dispatcher to
    find, so the launcher sends it: once, signed, FAILED at the first step."""
    with (
        webhook_receiver() as receiver,
        # The outbox polls every 0.1 s (production: 1 s): the test waits for the poll that sends it.
        gateways(tmp_path, webhook_secret="s3cret", webhook_allow_private=True, webhook_poll_seconds=0.1) as (
            [client],
            dagster,
        ),
    ):
        dagster.down = True
        dagster.ping = lambda timeout=2.0: True  # type: ignore[method-assign]  # accepted, never launched
        started = client.post("/workflow/start", json=start_body(webhookUrl=receiver.url))
        assert started.status_code == 200, started.text
        workflow = started.json()["workflowId"]
        poll_until(lambda: client.get(f"/workflow/{workflow}").json()["status"], lambda s: s == "FAILED")
        (post,) = poll_until(receiver.posts, bool)
        state = Webhook(caller_secret("s3cret", ANONYMOUS)).verify(post.body, post.headers)
        assert state["workflowId"] == workflow and state["status"] == "FAILED", state
        assert state["failedStep"] == "UPLOADING_IMAGE" and state["error"], state
        assert post.headers["webhook-id"] == read_start(client.app.state.store, workflow).launch_tag  # type: ignore[attr-defined, union-attr]
        assert not [
            b for b in stored_blobs(tmp_path) if "/webhooks/" in b and b.endswith(".json") and "requests/" not in b
        ]


def test_a_start_cancelled_before_its_run_exists_sends_its_cancelled_webhook(tmp_path: Path) -> None:
    """The same promise for a start cancelled while it waited for the launcher: no run will
    ever carry it, so the launcher that closes the record sends CANCELLED (seen on a loaded
    machine: test_live's cancel reached the start before its launch, and no webhook came)."""
    with (
        webhook_receiver() as receiver,
        gateways(tmp_path, webhook_secret="s3cret", webhook_allow_private=True, max_parallel_launches=1) as (
            [client],
            dagster,
        ),
    ):
        dagster.gate.clear()
        held = client.post("/workflow/start", json=start_body()).json()["workflowId"]
        assert dagster.in_launch.wait(5)
        started = client.post("/workflow/start", json=start_body(webhookUrl=receiver.url))
        workflow = started.json()["workflowId"]
        cancelled = client.post(f"/workflow/{workflow}/cancel")
        assert cancelled.json() == {"workflowId": workflow, "status": "CANCELLED"}, cancelled.text
        dagster.gate.set()
        (post,) = poll_until(receiver.posts, bool)
        state = Webhook(caller_secret("s3cret", ANONYMOUS)).verify(post.body, post.headers)
        assert state == {"workflowId": workflow, "status": "CANCELLED", "progress": 5, "currentStep": "UPLOADING_IMAGE"}
        assert post.headers["webhook-id"] == read_start(client.app.state.store, workflow).launch_tag  # type: ignore[attr-defined, union-attr]
        poll_until(lambda: client.app.state.launcher.pending(), lambda n: n == 0)  # type: ignore[attr-defined]
        assert dagster.launches == [(FULL_JOB, held)]
        assert len(receiver.posts()) == 1


def test_an_idempotent_retry_while_pending_gets_the_same_workflow_and_one_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every claim is "stale" at once: only its `settled` check (a pending start counts) keeps a
    # retry from launching the key again while the first run does not exist yet.
    monkeypatch.setattr(idempotency, "IDEMPOTENCY_CLAIM_STALE_SECONDS", 0.0)
    # Takeover at production's pace, not FAST's 0.3 s: with a heartbeat due every 0.1 s, a loaded
    # machine let a's lapse while its launch was held, and b took the start over and launched it
    # too (a fourteenth-session run: 2 launches). That is the takeover's contract (a gateway whose
    # heartbeat is that old is taken for dead), tested in its own tests; not what this one is about.
    with gateways(tmp_path, count=2, start_takeover_seconds=30.0) as ([a, b], dagster):
        dagster.gate.clear()
        key = {"Idempotency-Key": "order-19"}
        first = a.post("/workflow/start", json=start_body(), headers=key)
        assert first.status_code == 200, first.text
        assert dagster.in_launch.wait(5)
        for replica in (a, b):
            again = replica.post("/workflow/start", json=start_body(), headers=key)
            assert again.json() == first.json(), again.text
        dagster.gate.set()
        poll_until(lambda: _pending_files(tmp_path), lambda files: files == [])
        again = b.post("/workflow/start", json=start_body(), headers=key)
        assert again.json()["workflowId"] == first.json()["workflowId"]
        assert len(dagster.launches) == 1, dagster.launches


def _abandoned_start(tmp_path: Path, launched: RunInfo | None = None) -> PendingStart:
    """A pending start of a gateway that died before launching it (no heartbeat), not yet stored."""
    store = LocalBlobStore(root=str(tmp_path / "blobs"))
    workflow = "jewelry-gen-00000000-0000-4000-8000-000000000019"
    upload = store.put(f"requests/{workflow}/upload", b"photo")
    start = PendingStart(
        workflowId=workflow,
        owner="anonymous",
        job=FULL_JOB,
        runConfig={"ops": {"prepare_canvas": {"config": {"original_image": {"image_uri": upload}}}}},
        tags={OWNER_TAG: "anonymous", LAUNCH_TAG: "tag-of-the-dead-gateway"},
        gateway="a-gateway-that-died",
        createdAt=time.time() - 60,
        blobs=[upload],
    )
    return start


def _backdate(tmp_path: Path, workflow: str) -> None:
    """Make a pending start's record a minute old (the sweep leaves younger ones alone)."""
    os.utime(tmp_path / "blobs" / "jewelry-uploads" / pending_path(workflow), (time.time() - 60,) * 2)


@pytest.mark.parametrize("launched_before_dying", [False, True])
def test_a_dead_gateways_pending_start_is_taken_over_and_launched_once(
    tmp_path: Path, launched_before_dying: bool
) -> None:
    with gateways(tmp_path, count=3) as (replicas, dagster):
        launchers = [replica.app.state.launcher for replica in replicas]  # type: ignore[attr-defined]
        sweeps = [sweeps_of(launcher) for launcher in launchers]
        start = _abandoned_start(tmp_path)
        if launched_before_dying:  # it launched, then died before deleting the record
            dagster.runs[start.workflowId] = RunInfo("run-0", FULL_JOB, "STARTED", [], dict(start.tags))
        write_start(LocalBlobStore(root=str(tmp_path / "blobs")), start)
        _backdate(tmp_path, start.workflowId)
        poll_until(lambda: _pending_files(tmp_path), lambda files: files == [])
        # Three sweepers raced for it: a second takeover would be launched by now.
        settled_starts(launchers, sweeps)
        expected = [] if launched_before_dying else [(FULL_JOB, start.workflowId)]
        assert dagster.launches == expected
        assert dagster.runs[start.workflowId].tags[LAUNCH_TAG] == "tag-of-the-dead-gateway"
        assert replicas[0].get(f"/workflow/{start.workflowId}").json()["status"] == "RUNNING"


def test_a_live_gateways_pending_start_is_left_to_it(tmp_path: Path) -> None:
    with gateways(tmp_path, count=2) as ([a, b], dagster):
        b_sweeps = sweeps_of(b.app.state.launcher)  # type: ignore[attr-defined]
        dagster.gate.clear()
        workflow = a.post("/workflow/start", json=start_body()).json()["workflowId"]
        assert dagster.in_launch.wait(5)
        _backdate(tmp_path, workflow)
        swept = b_sweeps()
        poll_until(b_sweeps, lambda n: n >= swept + 2)  # b swept the backdated record; a's heartbeat is fresh
        assert b.app.state.launcher.pending() == 0  # type: ignore[attr-defined]
        dagster.gate.set()
        poll_until(lambda: _pending_files(tmp_path), lambda files: files == [])
        assert dagster.launches == [(FULL_JOB, workflow)]


def _cancel_in_background(client: TestClient, workflow: str, dagster: RecordingDagster) -> list[Any]:
    """POST the cancel in a thread (it may wait for a launch under way); once it answers, the
    list holds the answer and the run as Dagster had it at that moment."""
    answers: list[Any] = []

    def cancel() -> None:
        answer = client.post(f"/workflow/{workflow}/cancel")
        answers.append((answer, dagster.runs.get(workflow)))

    threading.Thread(target=cancel, daemon=True).start()
    return answers


def _cancel_stored(client: TestClient, workflow: str) -> bool:
    return client.app.state.store.exists_path(start_cancel_path(workflow))  # type: ignore[attr-defined, no-any-return]


def _first_event_status(client: TestClient, workflow: str) -> str:
    with client.stream("GET", f"/workflow/{workflow}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                return str(json.loads(line[5:])["status"])
    raise AssertionError("no event")


def test_cancel_before_the_run_exists(tmp_path: Path) -> None:
    """A start still in the launcher's queue is CANCELLED at once and never launched. One whose
    launch is under way reads RUNNING (GET and the event stream) and its cancel answers only once
    the run it launched stopped (issue 28: the API said CANCELLED, then GET said RUNNING for
    seconds while the run went on)."""
    with gateways(tmp_path, max_parallel_launches=1) as ([client], dagster):
        dagster.gate.clear()
        held = client.post("/workflow/start", json=start_body()).json()["workflowId"]
        assert dagster.in_launch.wait(5)
        queued = client.post("/workflow/start", json=start_body()).json()["workflowId"]
        cancelled = client.post(f"/workflow/{queued}/cancel")
        assert cancelled.json() == {"workflowId": queued, "status": "CANCELLED"}, cancelled.text
        assert client.get(f"/workflow/{queued}").json()["status"] == "CANCELLED"
        answers = _cancel_in_background(client, held, dagster)
        poll_until(lambda: _cancel_stored(client, held), bool)
        assert client.get(f"/workflow/{held}").json()["status"] == "RUNNING"
        assert _first_event_status(client, held) == "RUNNING"
        assert not answers, "the cancel of a launch under way answered before the launch's outcome"
        dagster.gate.set()
        (answer, run_then), *_ = poll_until(lambda: answers, bool, 30)
        assert answer.json() == {"workflowId": held, "status": "CANCELLED"}, answer.text
        assert run_then is not None and run_then.status == "CANCELED"  # stopped before the API said so
        poll_until(lambda: client.app.state.launcher.pending(), lambda n: n == 0)  # type: ignore[attr-defined]
        assert dagster.launches == [(FULL_JOB, held)]  # it was in flight: launched, then terminated
        assert client.get(f"/workflow/{held}").json()["status"] == "CANCELLED"
        assert client.get(f"/workflow/{queued}").json()["status"] == "CANCELLED"
        assert f"jewelry-uploads/requests/{queued}/upload" not in stored_blobs(tmp_path)
        assert_refused(client.post(f"/workflow/{queued}/cancel"), 409, f"workflow {queued} already ended: CANCELLED")


def test_a_cancel_of_a_launch_that_does_not_end_in_time_is_running_not_cancelled(tmp_path: Path) -> None:
    """The launch is still under way at CANCEL_WAIT_SECONDS: 202 RUNNING, as for a run still
    stopping, and GET says RUNNING; the launcher then stops the run it launched: CANCELLED."""
    with gateways(tmp_path, cancel_wait_seconds=0.3) as ([client], dagster):
        dagster.gate.clear()
        held = client.post("/workflow/start", json=start_body()).json()["workflowId"]
        assert dagster.in_launch.wait(5)
        answer = client.post(f"/workflow/{held}/cancel")
        assert (answer.status_code, answer.json()) == (202, {"workflowId": held, "status": "RUNNING"}), answer.text
        assert client.get(f"/workflow/{held}").json()["status"] == "RUNNING"
        again = client.post(f"/workflow/{held}/cancel")  # a second cancel waits as the first did
        assert (again.status_code, again.json()["status"]) == (202, "RUNNING"), again.text
        dagster.gate.set()
        poll_until(lambda: dagster.runs.get(held), lambda run: run is not None and run.status == "CANCELED", 30)
        poll_until(lambda: client.get(f"/workflow/{held}").json()["status"], lambda s: s == "CANCELLED")


def test_a_cancel_during_the_launch_stops_a_run_dagster_first_refuses_to_terminate(tmp_path: Path) -> None:
    """Dagster refuses to terminate a STARTING run: the cancel (and the launcher) ask again until
    it takes, so the run a cancelled start launched ends CANCELED before the API says CANCELLED."""
    with gateways(tmp_path) as ([client], dagster):
        dagster.refuse_terminates = 3
        dagster.gate.clear()
        held = client.post("/workflow/start", json=start_body()).json()["workflowId"]
        assert dagster.in_launch.wait(5)
        answers = _cancel_in_background(client, held, dagster)
        poll_until(lambda: _cancel_stored(client, held), bool)
        dagster.gate.set()
        (answer, run_then), *_ = poll_until(lambda: answers, bool, 30)
        assert answer.json() == {"workflowId": held, "status": "CANCELLED"}, answer.text
        assert run_then is not None and run_then.status == "CANCELED"
        assert dagster.refuse_terminates == 0
        assert client.get(f"/workflow/{held}").json()["status"] == "CANCELLED"


def test_a_launched_run_the_launcher_stopped_first_answers_cancelled_not_409(tmp_path: Path) -> None:
    """The launcher, seeing the cancel, terminates the run it launched too; whichever terminate
    comes second is refused (the run is no longer in progress). For the cancel that is its work
    done, not a conflict: the clean-clone CI's webhook test got a 409 from the first attempt at
    this (596b018). Here the cancel's terminate is the refused one."""
    with gateways(tmp_path) as ([client], dagster):
        dagster.stopped_by_another = True
        dagster.launcher_terminates_after = 1.0
        dagster.gate.clear()
        held = client.post("/workflow/start", json=start_body()).json()["workflowId"]
        assert dagster.in_launch.wait(5)
        answers = _cancel_in_background(client, held, dagster)
        poll_until(lambda: _cancel_stored(client, held), bool)
        dagster.gate.set()
        (answer, run_then), *_ = poll_until(lambda: answers, bool, 30)
        assert (answer.status_code, answer.json()) == (200, {"workflowId": held, "status": "CANCELLED"}), answer.text
        assert run_then is not None and run_then.status == "CANCELED"
        assert client.get(f"/workflow/{held}").json()["status"] == "CANCELLED"


def test_a_launch_whose_run_ended_before_the_cancel_answers_409(tmp_path: Path) -> None:
    """A run that ended before the cancel reached it cannot be stopped: 409 with its final state,
    as for any run, never CANCELLED for a run that completed."""
    with gateways(tmp_path) as ([client], dagster):
        dagster.launched_status = "SUCCESS"
        dagster.gate.clear()
        held = client.post("/workflow/start", json=start_body()).json()["workflowId"]
        assert dagster.in_launch.wait(5)
        answers = _cancel_in_background(client, held, dagster)
        poll_until(lambda: _cancel_stored(client, held), bool)
        dagster.gate.set()
        (answer, _), *_ = poll_until(lambda: answers, bool, 30)
        assert_refused(answer, 409, f"workflow {held} already ended: COMPLETED")
        assert dagster.runs[held].status == "SUCCESS"


def test_a_cancel_while_the_launch_is_retried_stops_a_run_launched_unanswered(tmp_path: Path) -> None:
    """Dagster launched the run and went away before answering: the launcher retries. A cancel
    then (Dagster still away) cannot tell whether a run exists: 202 RUNNING, and the launcher,
    once Dagster answers again, stops the run it finds instead of closing the record CANCELLED
    over a run that goes on."""
    with gateways(tmp_path, cancel_wait_seconds=0.3, start_give_up_seconds=30) as ([client], dagster):
        dagster.gate.clear()
        held = client.post("/workflow/start", json=start_body()).json()["workflowId"]
        assert dagster.in_launch.wait(5)
        dagster.lose_launch_answer = True
        dagster.gate.set()
        poll_until(lambda: dagster.down, bool)
        dagster.lose_launch_answer = False
        answer = client.post(f"/workflow/{held}/cancel")
        assert (answer.status_code, answer.json()) == (202, {"workflowId": held, "status": "RUNNING"}), answer.text
        assert client.get(f"/workflow/{held}").json()["status"] == "RUNNING"
        time.sleep(0.5)  # the launcher's retry reads the cancel while Dagster is still away
        assert client.get(f"/workflow/{held}").json()["status"] == "RUNNING"
        dagster.down = False
        poll_until(lambda: dagster.runs[held].status, lambda s: s == "CANCELED", 30)
        poll_until(lambda: client.get(f"/workflow/{held}").json()["status"], lambda s: s == "CANCELLED")
        assert dagster.launches == [(FULL_JOB, held)]


def test_a_cancelled_start_of_a_gateway_that_died_launching_it_has_its_run_stopped(tmp_path: Path) -> None:
    """The cancel came while a gateway was launching (launch announced), and that gateway died
    with the run launched: the sweep takes the record over and the run is stopped, where closing
    the record CANCELLED left the run going on."""
    with gateways(tmp_path) as ([client], dagster):
        store = LocalBlobStore(root=str(tmp_path / "blobs"))
        start = _abandoned_start(tmp_path).but(attempts=1)
        dagster.runs[start.workflowId] = RunInfo("run-0", FULL_JOB, "STARTED", [], dict(start.tags))
        write_start(store, start)
        mark_cancelled(store, start.workflowId)
        _backdate(tmp_path, start.workflowId)
        poll_until(lambda: dagster.runs[start.workflowId].status, lambda s: s == "CANCELED", 30)
        poll_until(lambda: _pending_files(tmp_path), lambda files: files == [])
        assert client.get(f"/workflow/{start.workflowId}").json()["status"] == "CANCELLED"
        assert dagster.launches == []


def test_a_cancelled_start_whose_run_failed_with_a_retry_coming_has_the_retry_stopped(tmp_path: Path) -> None:
    """The run a cancelled start launched FAILED, and Dagster's retry of it is coming (will_retry
    "true"): the request has not ended. The launcher waits for the retry (it carries the run's
    launch tag) and stops it, where taking the failed run as stopped let the retry run on after
    the cancel."""
    with gateways(tmp_path) as ([client], dagster):
        store = LocalBlobStore(root=str(tmp_path / "blobs"))
        start = _abandoned_start(tmp_path).but(attempts=1)
        failed = RunInfo("run-0", FULL_JOB, "FAILURE", [], {**start.tags, WILL_RETRY_TAG: "true"}, end_time=time.time())
        dagster.runs[start.workflowId] = failed
        seen_failed = threading.Event()
        read = dagster.latest_run

        def reading(request_id: str) -> RunInfo | None:
            run = read(request_id)
            if run is failed:
                seen_failed.set()
            return run

        dagster.latest_run = reading  # type: ignore[method-assign]
        write_start(store, start)
        mark_cancelled(store, start.workflowId)
        _backdate(tmp_path, start.workflowId)  # the sweep takes it over and finds the run launched
        assert seen_failed.wait(30), "the launcher never read the failed run"
        dagster.runs[start.workflowId] = RunInfo("run-1", FULL_JOB, "QUEUED", [], dict(start.tags))  # the retry
        poll_until(lambda: dagster.runs[start.workflowId].status, lambda s: s == "CANCELED", 10)
        poll_until(lambda: _pending_files(tmp_path), lambda files: files == [])
        assert client.get(f"/workflow/{start.workflowId}").json()["status"] == "CANCELLED"
        assert dagster.launches == []


WORKFLOW_OF_THE_RACE = "jewelry-gen-00000000-0000-4000-8000-000000000028"


class _AnnouncingStore:
    """A blob store where the launcher announces its launch just as a reader looks for the cancel."""

    def __init__(self, store: LocalBlobStore) -> None:
        self.store = store
        self.armed = False

    def get_path(self, path: str) -> bytes:
        return self.store.get_path(path)

    def exists_path(self, path: str) -> bool:
        found = self.store.exists_path(path)
        if self.armed and path == start_cancel_path(WORKFLOW_OF_THE_RACE):
            self.armed = False
            start = PendingStart(**json.loads(self.get_path(pending_path(WORKFLOW_OF_THE_RACE))))
            write_start(self.store, start.but(attempts=1))
        return found


def test_a_launch_announced_while_the_cancel_is_read_is_seen(tmp_path: Path) -> None:
    """The reader must read the record after it saw the cancel: read before, it misses a launch
    announced in between and says CANCELLED for a start whose run is then launched."""
    local = LocalBlobStore(root=str(tmp_path / "blobs"))
    write_start(local, _abandoned_start(tmp_path).but(workflowId=WORKFLOW_OF_THE_RACE))
    mark_cancelled(local, WORKFLOW_OF_THE_RACE)
    store = _AnnouncingStore(local)
    store.armed = True
    read = read_start(store, WORKFLOW_OF_THE_RACE)  # type: ignore[arg-type]
    assert read is not None and read.attempts == 1
    assert state_of_start(read).status == "RUNNING"


def test_another_callers_pending_start_is_not_found(tmp_path: Path) -> None:
    keys = {"gateway_api_keys": "key-one,key-two", "gateway_secret": "a-secret-of-the-test"}
    with gateways(tmp_path, **keys) as ([client], dagster):
        dagster.gate.clear()
        started = client.post("/workflow/start", json=start_body(), headers={"X-API-Key": "key-one"})
        workflow = started.json()["workflowId"]
        assert client.get(f"/workflow/{workflow}", headers={"X-API-Key": "key-one"}).status_code == 200
        for path in (f"/workflow/{workflow}", f"/workflow/{workflow}/events"):
            assert_refused(client.get(path, headers={"X-API-Key": "key-two"}), 404, no_workflow(workflow))
        cancel = client.post(f"/workflow/{workflow}/cancel", headers={"X-API-Key": "key-two"})
        assert_refused(cancel, 404, no_workflow(workflow))
