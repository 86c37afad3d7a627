"""The watcher: finds in Dagster the runs that owe webhooks and queues their events in the outbox.

A run launched with a `webhookUrl` carries tags (gateway/webhooks.py `store_webhook_url`; its
`webhookEvents`, events.py): the watcher queues its final state when it ends (a failed run that
Dagster retries ends with its retry) and, when asked, `started` and `progress` while it runs.
A restarted gateway looks back WEBHOOK_RECOVERY_HOURS for finished runs without a record, so
what a gateway owed is queued by the next one (or by a live replica, once the dead one's claim is
CLAIM_STALE_SECONDS old); what is queued is delivered by any replica's
outbox dispatcher (dispatcher.py), across restarts, for up to WEBHOOK_GIVE_UP_SECONDS.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable

from gateway.claims import Claim, claim, release
from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError
from gateway.dagster_api.models import RunInfo
from gateway.results import ResultReader
from gateway.security import ANONYMOUS
from gateway.settings import GatewaySettings
from gateway.starts import PendingStart, state_of_start
from gateway.webhook_outbox import outbox
from gateway.webhook_outbox.dispatcher import OutboxDispatcher
from gateway.webhook_outbox.events import LiveEvents, final_event, wanted
from gateway.webhooks import master_key, redact
from gateway.workflow_state import state_of
from jewel_dagster.contract import (
    OWNER_TAG,
    PARTITION_TAG,
    WEBHOOK_KEY_TAG,
    WEBHOOK_LIVE_TAG,
    WEBHOOK_TAG,
    WEBHOOK_URL_TAG,
    WILL_RETRY_TAG,
)
from jewel_dagster.resources.blob_store import BlobStore, BlobStoreError
from jewel_dagster.storage_layout import webhook_delivery_claim, webhook_record_path, webhook_url_path

log = logging.getLogger(__name__)

_SETTLE_SECONDS = 3.0  # a failed run gets its will_retry tag a moment after its status
# A run's claim covers reading its final state and queuing it, not its POSTs (the outbox makes
# those). Queuing is idempotent (the outbox keeps one record per delivery id), so a live claimant
# overtaken after this long costs a second read, never a second POST; a dead one costs this delay.
CLAIM_STALE_SECONDS = 30.0
# A contested run still without a record this long after it was first contested is left to the
# next gateway's look-back (each start looks back WEBHOOK_RECOVERY_HOURS), with a warning.
CONTESTED_MAX_SECONDS = 3600.0

_PAGE = 100
_MAX_PAGES = 50
_ENDINGS = ("SUCCESS", "FAILURE", "CANCELED")
_LIVE = ("STARTING", "STARTED")
_LIVE_LIMIT = 1000


class WebhookDispatcher:
    """Watches Dagster for runs that owe webhooks and queues each event once in the outbox.

    One thread asks Dagster (one listing a tick of finished runs, one of running runs that want
    `started`/`progress`), through the gateway's run reader: with STATUS_SOURCE=storage (`make
    run`, docker-compose) the run storage, so watching costs the webserver nothing (over GraphQL
    it cost the webserver ~2.5 % of a core per gateway replica at the 1 s poll, idle or not);
    a small pool reads final states. Every gateway replica may run it: a
    run's final webhook is claimed in the shared blob store first, and the outbox queues a
    delivery id once. The outbox's own dispatcher (gateway/webhook_outbox) POSTs and retries.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        runs: DagsterRuns,
        results: ResultReader,
        store: BlobStore,
        verify: ssl.SSLContext | bool = True,  # the certificates https receivers are checked against
        on_delivery: Callable[[str], None] | None = None,  # told each ended delivery's status: metrics
        clock: Callable[[], float] = time.time,  # the outbox's scheduling clock (tests make it fast)
        rng: random.Random | None = None,  # the outbox's jitter
    ) -> None:
        master_key(settings.webhook_secret)  # a broken WEBHOOK_SECRET stops the start, not each POST
        self._settings = settings
        self._verify = verify
        self._on_delivery = on_delivery
        self._runs = runs
        self._results = results
        self._store = store
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook")
        self._handled: dict[str, float] = {}  # run id -> when it was handled
        # Runs another replica claimed: looked at again each tick until their record exists,
        # so a claimant killed before queuing is overtaken once its claim goes stale.
        self._contested: dict[str, tuple[str, RunInfo, float]] = {}  # run id -> (workflow, run, since)
        self._queuing: dict[concurrent.futures.Future[None], tuple[str, RunInfo, Claim]] = {}
        self._clock = clock
        self._settling: dict[str, float] = {}  # failed run id -> when first seen without will_retry
        # After a restart, look back this far for runs that finished while no gateway watched.
        self._watermark = time.time() - settings.webhook_recovery_hours * 3600
        self._thread = threading.Thread(target=self._watch, name="webhook-watch", daemon=True)
        self._live = LiveEvents(settings.webhook_progress_seconds)
        self.outbox = OutboxDispatcher(settings, store, clock, rng, verify, on_delivery)

    def start(self) -> None:
        self._thread.start()
        self.outbox.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)  # a cancelled one's claim is released
        self.outbox.stop()

    # ------------------------------------------------------------------ watching

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except DagsterError as exc:
                log.warning("webhooks: Dagster did not answer: %s", exc)
            except Exception:  # the watcher must outlive any one bad run
                log.exception("webhooks: unexpected error")
            self._stop.wait(self._settings.webhook_poll_seconds)

    def _tick(self) -> None:
        self._retry_contested()  # needs the blob store only: done while Dagster is away too
        tick_started = time.time()
        before: float | None = None
        for _ in range(_MAX_PAGES):  # newest first; page back while pages come full
            batch = self._finished_runs(self._watermark, before)
            for run in batch:
                self._consider(run, tick_started)
            if len(batch) < _PAGE:
                break
            before = min(r.update_time or 0.0 for r in batch) + 1e-3
        if not self._settling:
            # Runs that finished before this tick were all seen; the margin covers slow commits.
            self._watermark = max(self._watermark, tick_started - 60.0)
        for run_id in [r for r, t in self._handled.items() if t < self._watermark - 300.0]:
            del self._handled[run_id]
        self._tick_live()

    def _finished_runs(self, after: float, before: float | None) -> list[RunInfo]:
        """Runs that owe a webhook and ended (updated) after `after`, before `before`, newest first."""
        return self._runs.reader.runs_listed({WEBHOOK_TAG: "1"}, _ENDINGS, after, before, _PAGE)

    def _consider(self, run: RunInfo, now: float) -> None:
        if run.run_id in self._handled or not self._owes_webhook(run, now):
            return
        self._handled[run.run_id] = now
        if final_event(run.status) not in wanted(run.tags):
            return  # the caller asked for other events only
        self._claim_and_queue(run.tags.get(PARTITION_TAG, ""), run)

    def _claim_and_queue(self, workflow_id: str, run: RunInfo) -> None:
        """Queue the run's final state unless it has a record, or another replica's live claim.

        Every replica watches; the one that claims the run queues it (gateway/claims.py). The
        others keep looking at it each tick (`_contested`) until its record exists, and take a
        claim over once it is CLAIM_STALE_SECONDS old: its replica died before queuing."""
        record = webhook_record_path(workflow_id, run.run_id)
        if self._store.exists_path(record):
            self._contested.pop(run.run_id, None)
            return  # queued (delivered, given up) by another replica or before a restart
        held = claim(
            self._store,
            webhook_delivery_claim(run.run_id),
            {},
            CLAIM_STALE_SECONDS,
            settled=lambda held: self._store.exists_path(record),
            now=self._clock,
        )
        if not held.won:
            self._contest(workflow_id, run)
            return
        self._contested.pop(run.run_id, None)
        try:
            future = self._pool.submit(self._deliver, workflow_id, run, held)
        except RuntimeError:  # stop() shut the pool meanwhile: the next replica or life queues it
            self._release(held)
            return
        self._queuing[future] = (workflow_id, run, held)
        future.add_done_callback(self._queued)

    def _contest(self, workflow_id: str, run: RunInfo) -> None:
        since = self._contested.get(run.run_id, (workflow_id, run, self._clock()))[2]
        self._contested[run.run_id] = (workflow_id, run, since)

    def _queued(self, future: concurrent.futures.Future[None]) -> None:
        """A queuing ended. One cancelled by stop() never ran, one that raised (the blob store
        failed) wrote no record: either way its claim is released, so another replica or this
        gateway's next life queues the run at once, and one that raised is looked at again by this
        replica too at its next tick (a lone gateway would otherwise leave it until its restart)."""
        entry = self._queuing.pop(future, None)
        if entry is None or not (future.cancelled() or future.exception() is not None):
            return
        workflow_id, run, held = entry
        if not future.cancelled():
            log.warning("webhooks: the final state of %s was not queued: %r", run.run_id, future.exception())
            self._contest(workflow_id, run)
        self._release(held)

    def _release(self, held: Claim) -> None:
        try:
            release(self._store, held)
        except BlobStoreError as exc:  # then it goes stale: queued CLAIM_STALE_SECONDS later
            log.warning("webhooks: cannot release the claim of a run not queued: %s", exc)

    def _retry_contested(self) -> None:
        """Each contested run once; one that fails (its claim's blobs unreadable) is logged and
        tried again next tick, so it never keeps the others (or this tick's finished runs) waiting."""
        for workflow_id, run, since in list(self._contested.values()):
            if self._stop.is_set():
                return
            if self._clock() - since > CONTESTED_MAX_SECONDS:
                log.warning(
                    "webhooks: %s has no record %.0f s on: left to the look-back", run.run_id, self._clock() - since
                )
                self._contested.pop(run.run_id, None)
                continue
            try:
                self._claim_and_queue(workflow_id, run)
            except Exception:  # a bad claim blob, the store away: this run only
                log.exception("webhooks: cannot look at the claim of %s again", run.run_id)

    def _owes_webhook(self, run: RunInfo, now: float) -> bool:
        """A failed run that Dagster will retry owes nothing: its retry run carries the webhook.
        Not marked handled: when the retry daemon cannot launch the retry (its code server down)
        it turns `will_retry` to "false", which updates the run, and the run is listed again and
        owes its `failed` webhook then (marked handled, that webhook was never sent)."""
        if run.status != "FAILURE":
            return True
        will_retry = run.tags.get(WILL_RETRY_TAG)
        # Undecided while GET still says RUNNING too (RETRY_DECISION_SECONDS from its end): sent
        # 3 s after the watcher first saw it, a `failed` webhook carried status RUNNING.
        first_seen = self._settling.setdefault(run.run_id, now)
        if will_retry is None and (now - first_seen < _SETTLE_SECONDS or run.retry_may_follow(now)):
            return False
        self._settling.pop(run.run_id, None)
        return will_retry != "true"

    # ------------------------------------------------------------------ queuing

    def _tick_live(self) -> None:
        """Runs that want `started` or `progress`: each poll, what they owe now goes to the outbox."""
        running = set()
        for listed in self._runs.reader.runs_listed({WEBHOOK_LIVE_TAG: "1"}, _LIVE, limit=_LIVE_LIMIT):
            run = self._runs.with_progress(listed)
            running.add(run.run_id)
            workflow_id = run.tags.get(PARTITION_TAG, "")
            state = state_of(workflow_id, run, self._runs, self._results)
            for event, delivery_id in self._live.due(run.run_id, run.tags, state.progress, time.time()):
                body = json.dumps(state.model_dump(exclude_none=True), separators=(",", ":")).encode()
                self._queue(workflow_id, run.run_id, run.tags, event, delivery_id, self._full_url(run), body)
        self._live.forget(running)

    def _queue(
        self,
        workflow_id: str,
        run_id: str | None,
        tags: dict[str, str],
        event: str,
        delivery_id: str,
        url: str,
        body: bytes,
    ) -> None:
        now = time.time()
        delivery = outbox.Delivery(
            id=delivery_id,
            workflowId=workflow_id,
            runId=run_id,
            owner=tags.get(OWNER_TAG, ANONYMOUS),  # runs without one (from the UI) were nobody's
            event=event,
            url=redact(url),
            urlKey=tags.get(WEBHOOK_KEY_TAG),
            createdAt=now,
            since=now,
            nextAttemptAt=now,
        )
        outbox.enqueue(self._store, delivery, url, body)

    def deliver_unlaunched_start(self, start: PendingStart) -> None:
        """A start that ended before its run existed (gateway/starts.py: given up FAILED, or
        cancelled before its launch) sends its `failed` or `cancelled` final state too, if it asked
        for a webhook and that event: no run carries it, so the watcher would never see it. Called
        before the start's blobs are deleted: the outbox marker keeps the URL until the delivery
        ends. Its `webhook-id` is the start's launch tag; the gateway that closes the record queues
        it (the outbox keeps one delivery per id, should two close it)."""
        event = "failed" if start.state == "failed" else "cancelled"
        key = start.tags.get(WEBHOOK_KEY_TAG)
        if key is None or event not in wanted(start.tags):
            return
        url = str(json.loads(self._store.get_path(webhook_url_path(key)))["url"])
        body = json.dumps(state_of_start(start).model_dump(exclude_none=True), separators=(",", ":")).encode()
        tags = {k: v for k, v in start.tags.items() if k != WEBHOOK_KEY_TAG}  # its URL blob goes with the start
        self._queue(start.workflowId, None, tags, event, start.launch_tag, url, body)

    def _full_url(self, run: RunInfo) -> str:
        """The URL as the caller gave it; runs launched before URLs were kept in the store carry
        it in their tag."""
        key = run.tags.get(WEBHOOK_KEY_TAG)
        if key is None:
            return run.tags.get(WEBHOOK_URL_TAG, "")
        return str(json.loads(self._store.get_path(webhook_url_path(key)))["url"])

    def _deliver(self, workflow_id: str, run: RunInfo, held: Claim | None = None) -> None:
        """Queue a finished run's final state in the outbox (the outbox dispatcher POSTs it)."""
        event = final_event(run.status)
        try:
            url = self._full_url(run)
            body = self._final_state(workflow_id, run)
        except (BlobStoreError, OSError, ValueError, KeyError) as exc:  # the URL's blob is gone or broken
            self._record_failure(workflow_id, run, event, f"the webhook URL cannot be read: {type(exc).__name__}")
            return
        except DagsterError as exc:  # Dagster kept failing: say so in the record, send nothing made up
            self._record_failure(workflow_id, run, event, f"the final state could not be read: {exc}")
            return
        if body is None:  # shutting down: nothing queued, so another replica or the next gateway does it
            if held is not None:
                release(self._store, held)
            return
        self._queue(workflow_id, run.run_id, run.tags, event, run.run_id, url, body)

    def _record_failure(self, workflow_id: str, run: RunInfo, event: str, error: str) -> None:
        now = time.time()
        failed = outbox.Delivery(
            id=run.run_id,
            workflowId=workflow_id,
            runId=run.run_id,
            owner=run.tags.get(OWNER_TAG, ANONYMOUS),
            event=event,
            url=redact(run.tags.get(WEBHOOK_URL_TAG, "")),
            urlKey=run.tags.get(WEBHOOK_KEY_TAG),
            status="failed",
            createdAt=now,
            since=now,
            lastError=error,
        )
        if outbox.record_ended(self._store, failed) and self._on_delivery is not None:
            self._on_delivery("failed")

    def _final_state(self, workflow_id: str, run: RunInfo) -> bytes | None:
        """GET's body for the run, asked again with backoff while Dagster does not answer; None
        when stopped meanwhile; DagsterError after the last attempt."""
        for attempt in range(1, self._settings.webhook_attempts + 1):
            try:
                # Its list of finished runs has no progress: a FAILED or CANCELLED body names the step.
                placed = run if run.status == "SUCCESS" else self._runs.with_progress(run)
                state = state_of(workflow_id, placed, self._runs, self._results)
                return json.dumps(state.model_dump(exclude_none=True), separators=(",", ":")).encode()
            except DagsterError as exc:
                log.warning("webhooks: cannot read the state of %s yet: %s", workflow_id, exc)
                if attempt == self._settings.webhook_attempts:
                    raise
                if self._stop.wait(self._settings.webhook_backoff_seconds * 2 ** (attempt - 1)):
                    return None
        return None
