"""Driving the webhook outbox in tests: a clock that jumps, and dispatchers drained inline."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.settings import GatewaySettings
from gateway.webhook_outbox import outbox
from gateway.webhook_outbox.dispatcher import OutboxDispatcher
from gateway.webhook_outbox.outbox import Delivery
from gateway.webhooks import redact
from jewel_dagster.resources.blob_store import LocalBlobStore


class Clock:
    """Scheduling time that only moves when told (starts at the wall clock, so redeliveries
    stamped with time.time() are due at once)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def outbox_settings(tmp_path: Path, **overrides: Any) -> GatewaySettings:
    options: dict[str, Any] = {"webhook_allow_private": True, "webhook_timeout_seconds": 2.0, **overrides}
    return GatewaySettings(local_blob_root=str(tmp_path), webhook_secret="s3cret", **options)


def inline_dispatcher(
    settings: GatewaySettings, clock: Clock, seed: int = 7, on_outcome: Callable[[str], None] | None = None
) -> OutboxDispatcher:
    """An outbox dispatcher that makes its attempts inside run_due (no threads)."""
    store = LocalBlobStore(root=settings.local_blob_root)
    return OutboxDispatcher(settings, store, clock, random.Random(seed), on_outcome=on_outcome, workers=0)


def queue(
    settings: GatewaySettings, url: str, delivery_id: str, clock: Clock, event: str = "completed", **fields: Any
) -> Delivery:
    """Queue a delivery the way the watcher does."""
    body = fields.pop("body", '{"workflowId":"jewelry-gen-w","status":"COMPLETED"}')
    delivery = Delivery(
        id=delivery_id,
        workflowId=fields.pop("workflowId", "jewelry-gen-w"),
        owner=fields.pop("owner", "anonymous"),
        event=event,
        url=redact(url),
        createdAt=clock.now,
        since=clock.now,
        nextAttemptAt=clock.now,
        **fields,
    )
    outbox.enqueue(LocalBlobStore(root=settings.local_blob_root), delivery, url, body.encode())
    return delivery


def drain(dispatcher: OutboxDispatcher, clock: Clock, until: float | None = None, max_passes: int = 10_000) -> int:
    """Run passes, jumping the clock to each next due time, until nothing is owed (or the clock
    would pass `until`); how many attempts were made."""
    made = 0
    for _ in range(max_passes):
        due = dispatcher.next_due()
        if due is None or (until is not None and due > until):
            return made
        clock.now = max(clock.now, due)
        made += dispatcher.run_due()
    raise AssertionError("the outbox never drained")
