"""The outbox: every webhook delivery as blobs in the shared store, so no gateway life owns one.

Three blobs per delivery and its body (keys in jewel_dagster/storage_layout.py):

- its record, `requests/<id>/webhooks/<delivery id>.json`: event, status, attempts, next
  attempt, last answer; the redacted URL only. The body it POSTs is a blob beside it (`.body`),
  written once: a final state may carry base64 images. Listed by `GET /webhooks/deliveries` and removed
  with the request by retention. Created with `create_path`, so two replicas that queue the same
  delivery (same id) queue it once.
- its marker, `webhook-outbox/<delivery id>.json`, while it is owed: the workflow and the full URL
  (which may hold credentials; deleted when the delivery ends). The dispatcher lists only these,
  so its poll costs what is owed, not every delivery ever made.
- its index entry, `webhook-deliveries/<delivery id>.json`: the workflow, for a redelivery by id.

The delivery id is the Standard Webhooks `webhook-id`: the run id for a run's final state (as
before the outbox), `<run id>.started`, `<run id>.progress.<n>`, a start's launch tag.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ValidationError

from jewel_dagster.resources.blob_store import BlobNotFoundError, BlobStore
from jewel_dagster.storage_layout import (
    WEBHOOK_OUTBOX_PREFIX,
    webhook_body_path,
    webhook_index_path,
    webhook_outbox_path,
    webhook_record_path,
    webhook_records_prefix,
    webhook_url_path,
)

Status = Literal["pending", "delivered", "refused", "gave_up", "failed"]
ENDED: tuple[Status, ...] = ("delivered", "refused", "gave_up", "failed")


class Delivery(BaseModel):
    """One webhook message and what became of it."""

    id: str
    workflowId: str
    runId: str | None = None
    owner: str
    event: str
    url: str  # redacted: scheme://host[:port]
    urlKey: str | None = None  # webhooks/<key>.json, the full URL, while retention keeps it (redelivery)
    status: Status = "pending"
    attempts: int = 0
    createdAt: float
    since: float  # the give-up window starts here: queued, or redelivered
    nextAttemptAt: float | None = None
    lastAttemptAt: float | None = None
    lastStatusCode: int | None = None
    lastError: str | None = None


def _dump(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


def _marker(delivery: Delivery, full_url: str) -> bytes:
    return json.dumps({"workflowId": delivery.workflowId, "url": full_url, "queuedAt": delivery.since}).encode()


def enqueue(store: BlobStore, delivery: Delivery, full_url: str, body: bytes) -> bool:
    """Queue `delivery` for `full_url`; False when a delivery of that id was queued already.

    The marker is written first: a gateway that dies before the record leaves a marker the
    dispatcher drops, and the run, still without a record, is queued again by whichever watcher
    looks next. A delivery already recorded is left as it is: a replica overtaken while it read
    the state must not replace the body that is (or was) POSTed under that id."""
    if store.exists_path(webhook_record_path(delivery.workflowId, delivery.id)):
        return False
    store.put_path(webhook_body_path(delivery.workflowId, delivery.id), body, "application/json")
    store.put_path(
        webhook_index_path(delivery.id), json.dumps({"workflowId": delivery.workflowId}).encode(), "application/json"
    )
    store.put_path(webhook_outbox_path(delivery.id), _marker(delivery, full_url), "application/json")
    if store.create_path(webhook_record_path(delivery.workflowId, delivery.id), _dump(delivery), "application/json"):
        return True
    existing = read(store, delivery.workflowId, delivery.id)
    if existing is not None and existing.status != "pending":
        store.delete_path(webhook_outbox_path(delivery.id))  # ours would send it again
    return False


def record_ended(store: BlobStore, delivery: Delivery) -> bool:
    """Record a delivery that ended before any POST (its URL or state could not be read);
    False when one was recorded already."""
    store.put_path(
        webhook_index_path(delivery.id), json.dumps({"workflowId": delivery.workflowId}).encode(), "application/json"
    )
    return store.create_path(webhook_record_path(delivery.workflowId, delivery.id), _dump(delivery), "application/json")


def body_of(store: BlobStore, delivery: Delivery) -> bytes | None:
    """What the delivery POSTs; None when nothing was to be sent, or retention removed it."""
    try:
        return store.get_path(webhook_body_path(delivery.workflowId, delivery.id))
    except BlobNotFoundError:
        return None


def read(store: BlobStore, workflow_id: str, delivery_id: str) -> Delivery | None:
    """The record, or None when there is none or it predates the outbox (no id, no owner)."""
    try:
        return Delivery.model_validate_json(store.get_path(webhook_record_path(workflow_id, delivery_id)))
    except (BlobNotFoundError, ValidationError):
        return None


def save(store: BlobStore, delivery: Delivery) -> None:
    """Write the record after an attempt; an ended delivery's marker (and full URL) goes."""
    store.put_path(webhook_record_path(delivery.workflowId, delivery.id), _dump(delivery), "application/json")
    if delivery.status in ENDED:
        store.delete_path(webhook_outbox_path(delivery.id))


def owed(store: BlobStore) -> Iterator[str]:
    """The ids of the deliveries still owed (their markers)."""
    for blob in store.list_prefix(WEBHOOK_OUTBOX_PREFIX):
        name = blob.path[len(WEBHOOK_OUTBOX_PREFIX) :]
        if name.endswith(".json"):
            yield name[: -len(".json")]


def marker(store: BlobStore, delivery_id: str) -> dict[str, str] | None:
    """The owed delivery's workflow and full URL; None once it ended."""
    try:
        return dict(json.loads(store.get_path(webhook_outbox_path(delivery_id))))
    except BlobNotFoundError:
        return None


def drop_marker(store: BlobStore, delivery_id: str) -> None:
    store.delete_path(webhook_outbox_path(delivery_id))


def of_workflow(store: BlobStore, workflow_id: str) -> list[Delivery]:
    """Every outbox delivery of a request, oldest first (records from before the outbox skipped)."""
    found = []
    for blob in store.list_prefix(webhook_records_prefix(workflow_id)):
        name = blob.path.rsplit("/", 1)[1]
        if not name.endswith(".json"):
            continue  # a body
        if (delivery := read(store, workflow_id, name.removesuffix(".json"))) is not None:
            found.append(delivery)
    return sorted(found, key=lambda d: (d.createdAt, d.id))


def find(store: BlobStore, delivery_id: str) -> Delivery | None:
    """A delivery by id alone (its index entry names the workflow)."""
    try:
        workflow_id = str(json.loads(store.get_path(webhook_index_path(delivery_id)))["workflowId"])
    except (BlobNotFoundError, ValueError, KeyError):
        return None
    return read(store, workflow_id, delivery_id)


def queue_again(store: BlobStore, delivery: Delivery, full_url: str, now: float) -> Delivery:
    """A redelivery: the same message (same id and body) owed again from `now`, with a new
    give-up window; attempts keep counting, so each attempt's claim stays unique."""
    again = delivery.model_copy(update={"status": "pending", "since": now, "nextAttemptAt": now})
    store.put_path(webhook_outbox_path(delivery.id), _marker(again, full_url), "application/json")
    store.put_path(webhook_record_path(delivery.workflowId, delivery.id), _dump(again), "application/json")
    return again


def full_url_of(store: BlobStore, delivery: Delivery) -> str | None:
    """The full URL to send a delivery to again: its marker's while owed, else its run's URL blob
    while retention keeps it; None when neither is left (a start's URL went with the start)."""
    if (mark := marker(store, delivery.id)) is not None:
        return mark["url"]
    if delivery.urlKey is None:
        return None
    try:
        return str(json.loads(store.get_path(webhook_url_path(delivery.urlKey)))["url"])
    except (BlobNotFoundError, ValueError, KeyError):
        return None
