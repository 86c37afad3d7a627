"""Drains the outbox: each owed delivery is attempted when due, by one replica, until it ends.

Every gateway replica runs one. Each poll lists the owed deliveries' markers; a due one is
attempted by whichever replica claims its next attempt number first (gateway/claims.py), so
replicas and restarts never make attempt n twice, and a replica killed between attempts leaves
the delivery for the next poll of any replica. A replica killed during a POST leaves a claim that
goes stale after one POST's deadline and a minute; the attempt is then made again (the receiver
may see that message twice, under the same `webhook-id`, which receivers deduplicate on).

A failed attempt waits a full-jitter exponential backoff (backoff.py) and the delivery is given
up (`gave_up`, counted) once its next attempt would fall past WEBHOOK_GIVE_UP_SECONDS.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable

from gateway.claims import claim
from gateway.settings import GatewaySettings
from gateway.webhook_outbox import outbox
from gateway.webhook_outbox.backoff import next_wait
from gateway.webhook_outbox.outbox import Delivery
from gateway.webhook_outbox.sender import send_once
from jewel_dagster.resources.blob_store import BlobStore, BlobStoreError
from jewel_dagster.storage_layout import webhook_attempt_claim

log = logging.getLogger(__name__)

_RESOLVE_SECONDS = 5.0  # gateway.webhooks._RESOLVE_SECONDS: the lookup before each POST
_ORPHAN_SECONDS = 60.0  # a marker with no record this long: its queuing gateway died in between


class OutboxDispatcher:
    """Attempts due deliveries; `clock` (scheduling, claims, give-up) is injectable so tests run
    a day of backoff in seconds. Signatures always carry the wall-clock time receivers check."""

    def __init__(
        self,
        settings: GatewaySettings,
        store: BlobStore,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        verify: ssl.SSLContext | bool = True,
        on_outcome: Callable[[str], None] | None = None,  # told each ended delivery's status: metrics
        workers: int = 4,  # 0: attempts run inline in run_due (tests)
    ) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._rng = rng or random.Random()
        self._verify = verify
        self._on_outcome = on_outcome
        self._stop = threading.Event()
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook-post")
            if workers
            else None
        )
        self._thread = threading.Thread(target=self._loop, name="webhook-outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; attempts in flight end within their POST deadline."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_due()
            except BlobStoreError as exc:
                log.warning("webhook outbox: the blob store did not answer: %s", exc)
            except Exception:  # the loop must outlive any one bad delivery
                log.exception("webhook outbox: unexpected error")
            self._stop.wait(self._settings.webhook_poll_seconds)

    def run_due(self) -> int:
        """One pass over the owed deliveries; how many attempts it started (inline: made)."""
        started = 0
        for delivery_id in list(outbox.owed(self._store)):
            if self._stop.is_set():
                break
            delivery = self._due(delivery_id)
            if delivery is None or not self._claim(delivery):
                continue
            started += 1
            if self._pool is None:
                self._attempt(delivery)
            else:
                self._pool.submit(self._attempt, delivery)
        return started

    def next_due(self) -> float | None:
        """When the earliest owed delivery is due (tests step their clock to it)."""
        times = []
        for delivery_id in outbox.owed(self._store):
            mark = outbox.marker(self._store, delivery_id)
            found = outbox.read(self._store, mark["workflowId"], delivery_id) if mark else None
            if found is not None and found.status == "pending":
                times.append(found.nextAttemptAt or found.createdAt)
        return min(times, default=None)

    def _due(self, delivery_id: str) -> Delivery | None:
        mark = outbox.marker(self._store, delivery_id)
        if mark is None:
            return None
        delivery = outbox.read(self._store, mark["workflowId"], delivery_id)
        if delivery is None:
            self._drop_orphan(delivery_id, mark)
            return None
        if delivery.status != "pending":
            outbox.drop_marker(self._store, delivery_id)
            return None
        if (delivery.nextAttemptAt or delivery.createdAt) > self._clock():
            return None
        return delivery

    def _drop_orphan(self, delivery_id: str, mark: dict[str, str]) -> None:
        queued = float(mark.get("queuedAt", 0.0))
        if self._clock() - queued > _ORPHAN_SECONDS:
            outbox.drop_marker(self._store, delivery_id)

    def _claim(self, delivery: Delivery) -> bool:
        """Attempt number n of a delivery is made by one replica: the one that claims it."""
        number = delivery.attempts + 1
        stale = self._settings.webhook_timeout_seconds + _RESOLVE_SECONDS + 60.0

        def made(held: object) -> bool:
            now = outbox.read(self._store, delivery.workflowId, delivery.id)
            return now is None or now.attempts >= number or now.status != "pending"

        held = claim(self._store, webhook_attempt_claim(delivery.id, number), {}, stale, settled=made, now=self._clock)
        return held.won

    def _attempt(self, delivery: Delivery) -> None:
        mark = outbox.marker(self._store, delivery.id)
        if mark is None:  # ended meanwhile (another replica's earlier attempt)
            return
        body = outbox.body_of(self._store, delivery)
        if body is None:  # its request was removed meanwhile: nothing left to send
            outbox.save(self._store, delivery.model_copy(update={"status": "failed", "lastError": "its body is gone"}))
            return
        result = send_once(
            self._settings,
            mark["url"],
            body,
            delivery.id,
            delivery.owner,
            delivery.event,
            time.time(),
            self._verify,
        )
        now = self._clock()
        number = delivery.attempts + 1
        update: dict[str, object] = {
            "attempts": number,
            "lastAttemptAt": now,
            "lastStatusCode": result.status_code,
            "lastError": result.error,
            "nextAttemptAt": None,
        }
        if result.verdict == "delivered":
            update["status"] = "delivered"
        elif result.verdict == "refused":
            update["status"] = "refused"
        else:
            wait = next_wait(
                number, self._settings.webhook_backoff_seconds, self._settings.webhook_backoff_max_seconds, self._rng
            )
            if now + wait - delivery.since > self._settings.webhook_give_up_seconds:
                update["status"] = "gave_up"
                log.warning(
                    "webhooks: gave up on %s (%s) after %d attempts: %s",
                    delivery.id,
                    delivery.url,
                    number,
                    result.error,
                )
            else:
                update["nextAttemptAt"] = now + wait
        ended = delivery.model_copy(update=update)
        outbox.save(self._store, ended)
        if ended.status != "pending" and self._on_outcome is not None:
            self._on_outcome(ended.status)
