"""Webhooks that never give up (issue 33, part 3): the outbox across outages, restarts and replicas,
the events a caller asked for, giving up, and the deliveries a caller lists and sends again.

Time is made fast: the outbox's clock is a number the test moves (tests/support/outbox.py), the
POSTs are real ones to a loopback receiver.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from devtools.stack import REPO_ROOT
from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.models import RunInfo, run_info_from
from gateway.observability.registry import GatewayMetrics
from gateway.results import ResultReader
from gateway.security import caller_id
from gateway.webhook_outbox import outbox
from gateway.webhook_outbox.backoff import delay_after_outage
from gateway.webhook_outbox.events import LiveEvents, event_tags
from gateway.webhook_outbox.watcher import WebhookDispatcher
from gateway.webhooks import caller_secret, store_webhook_url
from jewel_dagster.contract import WEBHOOK_EVENTS_TAG, WEBHOOK_KEY_TAG, WEBHOOK_URL_TAG, WILL_RETRY_TAG
from jewel_dagster.resources.blob_store import LocalBlobStore
from tests.support.e2e_stack import wait_until
from tests.support.gateway_client import gateway_client, poll_until, start_body
from tests.support.outbox import Clock, drain, inline_dispatcher, outbox_settings, queue
from tests.support.receivers import Receiver, webhook_receiver

OUTAGE = 600.0  # the receiver is down for 10 minutes
EVENTS = (("started", "run-1.started"), ("progress", "run-1.progress.40"), ("completed", "run-1"))


def _down_until(receiver: Receiver, clock: Clock, up_at: float) -> None:
    """The receiver answers 503 until the outbox's clock reaches `up_at`, then 200."""
    receiver.answer_with = lambda: 503 if clock.now < up_at else 200


def _accepted(receiver: Receiver, clock: Clock, up_at: float) -> Counter[str]:
    """How many POSTs of each webhook-id came after the receiver was up (those it accepted)."""
    return Counter(p.headers["webhook-id"] for p in receiver.posts() if float(p.headers["x-test-at"]) >= up_at)


def _stamping(receiver: Receiver, clock: Clock, up_at: float) -> None:
    """As _down_until, and each recorded POST notes the outbox's time it came at."""

    def answer() -> int:
        receiver.received[-1].headers["x-test-at"] = str(clock.now)  # the handler holds the lock
        return 503 if clock.now < up_at else 200

    receiver.answer_with = answer


def test_a_receiver_down_for_10_minutes_gets_every_event_once(tmp_path: Path) -> None:
    settings = outbox_settings(tmp_path)
    clock = Clock()
    up_at = clock.now + OUTAGE
    started = time.monotonic()
    with webhook_receiver() as receiver:
        _stamping(receiver, clock, up_at)
        for event, delivery_id in EVENTS:
            queue(settings, receiver.url, delivery_id, clock, event=event)
        drain(inline_dispatcher(settings, clock), clock)
        posts = receiver.posts()
    assert _accepted(receiver, clock, up_at) == Counter(d for _, d in EVENTS)  # each once, after the outage
    store = LocalBlobStore(root=settings.local_blob_root)
    for _, delivery_id in EVENTS:
        record = outbox.read(store, "jewelry-gen-w", delivery_id)
        assert record is not None and record.status == "delivered" and record.attempts > 5, record
    verifier = Webhook(caller_secret("s3cret", "anonymous"))
    for post in posts:  # every attempt signed, with the wall clock's time
        verifier.verify(post.body, post.headers)
    assert {p.headers["X-Jewel-Event"] for p in posts} == {"workflow.started", "workflow.progress", "workflow.finished"}
    assert time.monotonic() - started < 30, "10 minutes of backoff took too long to simulate"


def test_the_outage_figure_is_what_the_dispatcher_does(tmp_path: Path) -> None:
    """docs/api.md quotes the delay from the receiver's return to the delivery after a 10-minute
    outage, from backoff.delay_after_outage; the dispatcher follows that schedule to the draw."""
    settings = outbox_settings(tmp_path)
    for seed in (1, 2, 3):
        clock = Clock()
        up_at = clock.now + OUTAGE
        with webhook_receiver() as receiver:
            _stamping(receiver, clock, up_at)
            queue(settings, receiver.url, f"run-{seed}", clock)
            drain(inline_dispatcher(settings, clock, seed=seed), clock)
        accepted = [float(p.headers["x-test-at"]) for p in receiver.posts() if float(p.headers["x-test-at"]) >= up_at]
        expected_delay, expected_attempts = delay_after_outage(
            OUTAGE, settings.webhook_backoff_seconds, settings.webhook_backoff_max_seconds, random.Random(seed)
        )
        assert len(accepted) == 1 and accepted[0] - up_at == pytest.approx(expected_delay), seed
        assert len(receiver.posts()) == expected_attempts
    # The figure docs/api.md quotes for each cap: the same schedules, 10,000 of them.
    page = (REPO_ROOT / "docs" / "api.md").read_text()
    for cap in (300.0, 600.0, 3600.0):
        delays = sorted(delay_after_outage(OUTAGE, 1.0, cap, random.Random(s))[0] for s in range(10_000))
        row = f"| {cap:.0f} s | {statistics.median(delays):.0f} s | {delays[9000]:.0f} s | {delays[9900]:.0f} s |"
        assert row in page, row


def test_a_gateway_killed_between_attempts_leaves_the_rest_to_the_next_once(tmp_path: Path) -> None:
    """A dispatcher dropped after some failed attempts (its gateway killed), then a new one on the
    same store: every event delivered once, attempts counted on, the same webhook-id throughout."""
    settings = outbox_settings(tmp_path)
    clock = Clock()
    up_at = clock.now + OUTAGE
    with webhook_receiver() as receiver:
        _stamping(receiver, clock, up_at)
        for event, delivery_id in EVENTS:
            queue(settings, receiver.url, delivery_id, clock, event=event)
        first = inline_dispatcher(settings, clock, seed=1)
        made_before = drain(first, clock, until=clock.now + 120.0)
        first.stop()  # killed between attempts: nothing of it is left but the store
        assert made_before >= 3 and not _accepted(receiver, clock, up_at)
        second = inline_dispatcher(settings, clock, seed=2)
        drain(second, clock)
    assert _accepted(receiver, clock, up_at) == Counter(d for _, d in EVENTS)
    store = LocalBlobStore(root=settings.local_blob_root)
    for _, delivery_id in EVENTS:
        record = outbox.read(store, "jewelry-gen-w", delivery_id)
        posted = [p for p in receiver.posts() if p.headers["webhook-id"] == delivery_id]
        assert record is not None and record.status == "delivered" and record.attempts == len(posted), record
    assert list(outbox.owed(store)) == []


def test_two_replicas_polling_at_once_make_each_attempt_once(tmp_path: Path) -> None:
    """Two replicas poll at the same moment while a slow receiver holds the first one's POST: the
    second finds that attempt claimed and makes none of its own."""
    settings = outbox_settings(tmp_path)
    clock = Clock()
    replicas = [inline_dispatcher(settings, clock, seed=1), inline_dispatcher(settings, clock, seed=2)]
    up_at = clock.now + 60.0
    made: list[int] = []  # the attempts each replica's poll of a round made

    def slow_answer() -> int:
        # The POST is held until the other replica's poll of the round is over (was: 0.3 s each,
        # ~3 s a test): it polled while this attempt was out.
        wait_until(lambda: made, "the other replica's poll", timeout=10, every=0.005)
        return 503 if clock.now < up_at else 200

    with webhook_receiver() as receiver:
        receiver.answer_with = slow_answer
        queue(settings, receiver.url, "run-r", clock)
        for round_ in range(40):
            due = replicas[0].next_due()
            if due is None:
                break
            clock.now = max(clock.now, due)
            made.clear()
            threads = [threading.Thread(target=lambda r=r: made.append(r.run_due())) for r in replicas]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert sum(made) == 1, f"round {round_}: {made} attempts"
        posts = receiver.posts()
    record = outbox.read(LocalBlobStore(root=settings.local_blob_root), "jewelry-gen-w", "run-r")
    assert record is not None and record.status == "delivered" and record.attempts == len(posts) > 1


def test_a_delivery_past_the_limit_is_given_up_marked_and_counted(tmp_path: Path) -> None:
    settings = outbox_settings(tmp_path, webhook_give_up_seconds=3600.0)
    clock = Clock()
    queued_at = clock.now
    metrics = GatewayMetrics()
    with webhook_receiver() as receiver:
        receiver.answer_with = lambda: 503
        queue(settings, receiver.url, "run-g", clock)
        # Bounded: without a give-up the outbox would retry forever.
        drain(inline_dispatcher(settings, clock, on_outcome=metrics.webhook_ended), clock, until=queued_at + 2 * 3600.0)
        posts = receiver.posts()
    record = outbox.read(LocalBlobStore(root=settings.local_blob_root), "jewelry-gen-w", "run-g")
    assert record is not None and record.status == "gave_up" and record.attempts == len(posts) > 5, record
    assert record.lastStatusCode == 503 and record.lastAttemptAt is not None
    assert record.lastAttemptAt - queued_at <= 3600.0  # no attempt past the limit
    assert metrics.webhook_deliveries.labels("gave_up")._value.get() == 1
    assert list(outbox.owed(LocalBlobStore(root=settings.local_blob_root))) == []


# ------------------------------------------------------------------ which events


def test_progress_and_started_follow_the_callers_choice_at_most_every_half_second() -> None:
    live = LiveEvents(min_seconds=0.5)
    progress_only = event_tags(["progress", "completed"])
    assert live.due("r1", progress_only, 10, now=100.0) == [("progress", "r1.progress.10")]
    assert live.due("r1", progress_only, 20, now=100.2) == []  # within 500 ms
    assert live.due("r1", progress_only, 20, now=100.6) == [("progress", "r1.progress.20")]
    assert live.due("r1", progress_only, 20, now=103.0) == []  # no change, no event
    both = event_tags(["started", "progress"])
    assert live.due("r2", both, 0, now=100.0) == [("started", "r2.started"), ("progress", "r2.progress.0")]
    assert live.due("r2", both, 0, now=101.0) == []  # started once
    assert live.due("r3", event_tags(None), 50, now=100.0) == []  # the default: final events only
    assert event_tags(None) == {} == event_tags(["cancelled", "completed", "failed"])  # tags as before


@pytest.mark.parametrize(
    ("status", "events", "queued"),
    [
        ("SUCCESS", None, "completed"),
        ("FAILURE", None, "failed"),
        ("CANCELED", None, "cancelled"),
        ("SUCCESS", "failed", None),
        ("FAILURE", "failed", "failed"),
        ("SUCCESS", "started,progress", None),
    ],
)
def test_a_finished_run_queues_its_final_event_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str, events: str | None, queued: str | None
) -> None:
    settings = outbox_settings(tmp_path)
    store = LocalBlobStore(root=str(tmp_path))
    watcher = WebhookDispatcher(settings, DagsterRuns(settings), ResultReader(store), store)
    monkeypatch.setattr(watcher, "_final_state", lambda workflow_id, run: b'{"s":1}')
    tags = {WEBHOOK_URL_TAG: "http://127.0.0.1:9/hook", "dagster/partition": "jewelry-gen-e"}
    if events is not None:
        tags[WEBHOOK_EVENTS_TAG] = events
    raw = {"runId": "run-e", "jobName": "jewelry_generation", "status": status, "updateTime": 1.0,
           "tags": [{"key": k, "value": v} for k, v in tags.items()], "stepStats": []}  # fmt: skip
    if status == "FAILURE":
        raw["tags"].append({"key": "dagster/will_retry", "value": "false"})
    watcher._consider(run_info_from(raw), time.time())
    watcher._pool.shutdown(wait=True)
    found = outbox.of_workflow(store, "jewelry-gen-e")
    assert [d.event for d in found] == ([queued] if queued else [])


def test_a_failure_whose_retry_was_given_up_queues_its_failed_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen first with `will_retry=true` (its retry run will carry the webhook), then updated to
    "false" by the retry daemon that could not launch the retry: the run owes `failed` then."""
    settings = outbox_settings(tmp_path)
    store = LocalBlobStore(root=str(tmp_path))
    watcher = WebhookDispatcher(settings, DagsterRuns(settings), ResultReader(store), store)
    monkeypatch.setattr(watcher, "_final_state", lambda workflow_id, run: b'{"s":1}')
    tags = {WEBHOOK_URL_TAG: "http://127.0.0.1:9/hook", "dagster/partition": "jewelry-gen-r"}

    def seen(will_retry: str, update_time: float) -> None:
        raw = {"runId": "run-r", "jobName": "jewelry_generation", "status": "FAILURE", "updateTime": update_time,
               "tags": [{"key": k, "value": v} for k, v in {**tags, WILL_RETRY_TAG: will_retry}.items()],
               "stepStats": []}  # fmt: skip
        watcher._consider(run_info_from(raw), time.time())

    seen("true", 1.0)
    assert outbox.of_workflow(store, "jewelry-gen-r") == []  # the retry run will carry it
    seen("false", 2.0)  # the retry daemon gave the retry up
    watcher._pool.shutdown(wait=True)
    assert [d.event for d in outbox.of_workflow(store, "jewelry-gen-r")] == ["failed"]


def test_a_failure_not_yet_decided_is_not_sent_while_get_says_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed run without `dagster/will_retry` yet is RUNNING for GET until RETRY_DECISION_SECONDS
    after its end; its `failed` webhook waits as long (it went 3 s after the watcher first saw
    the run, with RUNNING in its body when the watcher saw it a moment after its end)."""
    settings = outbox_settings(tmp_path)
    store = LocalBlobStore(root=str(tmp_path))
    watcher = WebhookDispatcher(settings, DagsterRuns(settings), ResultReader(store), store)
    monkeypatch.setattr(watcher, "_final_state", lambda workflow_id, run: b'{"s":1}')
    ended = 1_000_000.0
    tags = {WEBHOOK_URL_TAG: "http://127.0.0.1:9/hook", "dagster/partition": "jewelry-gen-u"}
    raw = {"runId": "run-u", "jobName": "jewelry_generation", "status": "FAILURE", "updateTime": ended,
           "endTime": ended, "stepStats": [], "tags": [{"key": k, "value": v} for k, v in tags.items()]}  # fmt: skip
    run = run_info_from(raw)
    watcher._consider(run, ended + 1.0)  # first seen a second after its end
    watcher._consider(run, ended + 4.5)  # 3.5 s later: GET still says RUNNING
    assert "run-u" not in watcher._handled  # not queued (queuing itself goes on the watcher's pool)
    watcher._consider(run, ended + 5.5)  # decided: no retry comes (run retries off)
    watcher._pool.shutdown(wait=True)
    assert [d.event for d in outbox.of_workflow(store, "jewelry-gen-u")] == ["failed"]


def test_webhook_events_are_checked_with_a_clear_message(tmp_path: Path) -> None:
    with gateway_client(tmp_path, webhook_secret="s") as client:
        unknown = client.post(
            "/workflow/start", json=start_body(webhookUrl="https://8.8.8.8/h", webhookEvents=["finished"])
        )
        assert unknown.status_code == 422, unknown.text
        assert "unknown webhook event 'finished'; choose among started, progress, completed" in unknown.text
        no_url = client.post("/workflow/start", json=start_body(webhookEvents=["progress"]))
        assert no_url.status_code == 422 and "webhookEvents needs a webhookUrl" in no_url.text
        empty = client.post("/workflow/start", json=start_body(webhookUrl="https://8.8.8.8/h", webhookEvents=[]))
        assert empty.status_code == 422 and "at least one event" in empty.text


# ------------------------------------------------------------------ listing and redelivering


def test_a_caller_lists_and_redelivers_its_own_deliveries_only(tmp_path: Path) -> None:
    keys = {"gateway_api_keys": "key-a,key-b", "webhook_secret": "s3cret", "webhook_allow_private": True}
    # The gateway's outbox polls every 0.1 s (production: 1 s): the test waits for two of its polls.
    keys |= {"webhook_poll_seconds": 0.1}
    alice, bob = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}
    settings = outbox_settings(tmp_path / "blobs")
    with webhook_receiver() as receiver, gateway_client(tmp_path, **keys) as client:
        secret_url = receiver.url + "?token=t0ken-123"
        owner = caller_id("key-a", "test-secret-of-the-gateway")
        key = store_webhook_url(LocalBlobStore(root=settings.local_blob_root), secret_url)[WEBHOOK_KEY_TAG]
        queue(settings, secret_url, "run-l", Clock(), workflowId="jewelry-gen-l", owner=owner, urlKey=key)
        poll_until(receiver.posts, lambda posts: len(posts) == 1)  # the gateway's own outbox sends it
        listed = poll_until(
            lambda: client.get("/webhooks/deliveries", params={"workflowId": "jewelry-gen-l"}, headers=alice).json(),
            lambda body: body["deliveries"][0]["status"] == "delivered",
        )
        (item,) = listed["deliveries"]
        assert item["id"] == "run-l" and item["attempts"] == 1 and item["lastStatusCode"] == 200, item
        assert item["url"] == receiver.url.rsplit("/", 1)[0] and "t0ken" not in str(listed)  # redacted only
        assert (
            client.get("/webhooks/deliveries", params={"workflowId": "jewelry-gen-l"}, headers=bob).status_code == 404
        )
        assert client.post("/webhooks/deliveries/run-l/redeliver", headers=bob).status_code == 404
        assert client.post("/webhooks/deliveries/nothing/redeliver", headers=alice).status_code == 404
        again = client.post("/webhooks/deliveries/run-l/redeliver", headers=alice)
        assert again.status_code == 200 and again.json()["status"] == "pending", again.text
        first, second = poll_until(receiver.posts, lambda posts: len(posts) == 2)
    assert first.body == second.body and first.headers["webhook-id"] == second.headers["webhook-id"] == "run-l"
    Webhook(caller_secret("s3cret", owner)).verify(second.body, second.headers)
    record = outbox.read(LocalBlobStore(root=settings.local_blob_root), "jewelry-gen-l", "run-l")
    assert record is not None and record.status == "delivered" and record.attempts == 2


def test_a_run_without_a_record_is_queued_by_the_watcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watcher's part of a restart: a finished run whose webhook has no record yet is queued."""
    settings = outbox_settings(tmp_path)
    store = LocalBlobStore(root=str(tmp_path))
    watcher = WebhookDispatcher(settings, DagsterRuns(settings), ResultReader(store), store)
    monkeypatch.setattr(watcher, "_final_state", lambda workflow_id, run: b'{"s":1}')
    watcher._deliver(
        "jewelry-gen-q", RunInfo("run-q", "jewelry_generation", "SUCCESS", [], {WEBHOOK_URL_TAG: "http://x/"})
    )
    (delivery,) = outbox.of_workflow(store, "jewelry-gen-q")
    assert delivery.id == "run-q" and delivery.status == "pending" and list(outbox.owed(store)) == ["run-q"]


def test_a_running_run_that_asked_queues_started_and_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watcher's live side: a running run with `webhookEvents: [started, progress]` queues one
    `started` and one `progress` per progress value; a run that did not ask is not even listed
    (the query filters on the live tag)."""
    from jewel_dagster.contract import WEBHOOK_LIVE_TAG

    settings = outbox_settings(tmp_path, webhook_progress_seconds=0.0)
    store = LocalBlobStore(root=str(tmp_path))
    watcher = WebhookDispatcher(settings, DagsterRuns(settings), ResultReader(store), store)
    tags = {
        WEBHOOK_URL_TAG: "http://127.0.0.1:9/hook",
        "dagster/partition": "jewelry-gen-live",
        **event_tags(["started", "progress", "completed"]),
    }
    asked: list[dict[str, object]] = []

    def query(document: str, variables: dict[str, object]) -> dict[str, object]:
        asked.append(variables)
        raw = {"runId": "run-live", "jobName": "jewelry_generation", "status": "STARTED", "updateTime": 1.0,
               "tags": [{"key": k, "value": v} for k, v in tags.items()], "stepStats": []}  # fmt: skip
        return {"runsOrError": {"__typename": "Runs", "results": [raw]}}

    monkeypatch.setattr(watcher._runs.transport, "query", query)  # the GraphQL reader's answers
    monkeypatch.setattr(watcher._runs, "with_progress", lambda run: run)
    watcher._tick_live()
    watcher._tick_live()  # the same progress again: nothing new
    assert asked[0]["tags"] == [{"key": WEBHOOK_LIVE_TAG, "value": "1"}]
    assert asked[0]["statuses"] == ["STARTING", "STARTED"]
    found = outbox.of_workflow(store, "jewelry-gen-live")
    assert sorted(d.event for d in found) == ["progress", "started"], found
    (progress,) = [d for d in found if d.event == "progress"]
    body = outbox.body_of(store, progress)
    assert body is not None and b'"status":"RUNNING"' in body
