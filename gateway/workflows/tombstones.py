"""410 Gone for a workflow the retention job removed: its tombstone says when, and whose."""

from __future__ import annotations

import json

from fastapi import HTTPException, status

from gateway.security import ANONYMOUS
from jewel_dagster.resources.blob_store import BlobStore, BlobStoreError
from jewel_dagster.storage_layout import tombstone_path


def removed(store: BlobStore, workflow_id: str, caller: str) -> HTTPException | None:
    """410 when the retention job removed this workflow (its tombstone is the caller's), else None.

    Asked only once Dagster knows no run of the id, so a GET of a live workflow costs nothing more.
    Tombstones expire (RETENTION_TOMBSTONE_DAYS): then the id answers 404 like one never seen.
    """
    try:
        tombstone = json.loads(store.get_path(tombstone_path(workflow_id)))
    except (BlobStoreError, ValueError):
        return None
    if caller != ANONYMOUS and tombstone.get("owner") != caller:
        return None  # another caller's request answers like an unknown one
    removed_at = str(tombstone.get("removedAt", ""))[:10]
    return HTTPException(
        status.HTTP_410_GONE,
        detail=f"workflow {workflow_id} was removed on {removed_at} with its images: results are kept for a "
        "limited time; start a new workflow",
    )
