"""What the webhook routes ask of the outbox: a caller's deliveries, and one sent again.

Owner checks live here: a delivery records its caller, and another caller's delivery answers 404,
like one that does not exist (routes/webhooks.py only parses and answers).
"""

from __future__ import annotations

import time

from fastapi import HTTPException, status

from gateway.webhook_outbox import outbox
from gateway.webhook_outbox.outbox import Delivery, full_url_of
from jewel_dagster.resources.blob_store import BlobStore, ForeignUriError


def deliveries_of(store: BlobStore, caller: str, workflow_id: str) -> list[Delivery]:
    """The caller's deliveries of a workflow, oldest first; 404 when the workflow has deliveries
    but none is the caller's (or its id cannot be a workflow's). A workflow without any is []."""
    try:
        found = outbox.of_workflow(store, workflow_id)
    except ForeignUriError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"workflow {workflow_id} not found") from None
    mine = [d for d in found if d.owner == caller]
    if found and not mine:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"workflow {workflow_id} not found")
    return mine


def redeliver(store: BlobStore, caller: str, delivery_id: str) -> Delivery:
    """Queue the caller's delivery again (same id and body) from now; 404 when it is not the
    caller's, 409 when there is nothing to send or its URL is no longer stored."""
    try:
        delivery = outbox.find(store, delivery_id)
    except ForeignUriError:
        delivery = None
    if delivery is None or delivery.owner != caller:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"webhook delivery {delivery_id} not found")
    if outbox.body_of(store, delivery) is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail=f"webhook delivery {delivery_id} has nothing to send: {delivery.lastError}"
        )
    url = full_url_of(store, delivery)
    if url is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail=f"webhook delivery {delivery_id}: its URL is no longer stored"
        )
    return outbox.queue_again(store, delivery, url, time.time())
