"""Idempotency-Key: a retried start gets the first workflow back, whichever replica it reaches.

Two layers: striped in-process locks (a replica's own retries wait instead of racing) and claims
in the shared blob store (gateway/claims.py) across replicas. Nothing is kept per key in memory.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import HTTPException, status
from pydantic import BaseModel

from gateway.claims import Claim, ClaimError, claim, release
from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError, DagsterUnavailable
from gateway.schemas import StartResponse
from gateway.starts import read_start, state_of_start
from gateway.status import position_of
from gateway.workflows.errors import pipeline_unavailable
from jewel_dagster.contract import IDEMPOTENCY_REQUEST_TAG, IDEMPOTENCY_TAG, OWNER_TAG, PARTITION_TAG
from jewel_dagster.resources.blob_store import BlobStore, BlobStoreError
from jewel_dagster.storage_layout import idempotency_claim

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
# Striped locks: a fixed table, however many keys and requests pass through (a dict of one lock
# per key grew forever). Two keys sharing a stripe only wait for each other.
_LOCK_STRIPES = [threading.Lock() for _ in range(256)]
# A claimed Idempotency-Key whose run never appeared is taken over after this long even when its
# gateway cannot be told dead: above a launch's worst case (a 30 s wait for a launch slot, then
# GraphQL calls of up to 30 s each, retried once). A claimant whose heartbeat stopped (it died
# mid-launch) is taken over sooner: after START_TAKEOVER_SECONDS (`Presence`).
IDEMPOTENCY_CLAIM_STALE_SECONDS = 300.0
RETRY_AFTER_LAUNCHING = "1"  # a retry that finds the key's launch under way on another replica


class Presence(Protocol):
    """Which gateway replica claims, and whether a claimant is still alive (gateway/starts.py's
    heartbeats): a claim whose claimant died is taken over without waiting for its stale age."""

    def present(self) -> str: ...

    def alive(self, gateway_id: str) -> bool: ...


def stripe(key: str) -> threading.Lock:
    """The in-process lock of `key`'s stripe."""
    return _LOCK_STRIPES[int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % len(_LOCK_STRIPES)]


def idempotent(
    runs: DagsterRuns,
    store: BlobStore,
    caller: str,
    key: str | None,
    request: BaseModel,
    endpoint: str,
    request_id: str,
    launch: Callable[[dict[str, str]], StartResponse],
    presence: Presence,
) -> StartResponse:
    """Run `launch(tags)` once per (caller, Idempotency-Key); a retry gets the first workflow back,
    whichever gateway replica it reaches.

    The key (hashed with the caller) is claimed in the shared blob store (gateway/claims.py) with
    the workflow id this launch will use, a digest of the endpoint and body, and the claiming
    gateway: the first replica to claim it launches. A retry that finds the key launched (a run
    tagged with it, or a pending start carrying it) gets that workflow back; one that finds the
    launch still under way gets 503 with Retry-After, never a workflow id with nothing behind it;
    and once the claimant is dead (its heartbeat stopped) before launching, the retry launches.
    The same key with another request is a client bug, answered 422 rather than with a workflow
    that is not the one asked for. The key also rides on the run as a tag, so keys used before
    claims existed are still found.
    """
    if key is None:
        return launch({OWNER_TAG: caller})
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="Idempotency-Key: 1 to 200 printable characters")
    digest = hashlib.sha256(f"{caller}:{key}".encode()).hexdigest()[:32]
    asked = hashlib.sha256(f"{endpoint}\n{request.model_dump_json()}".encode()).hexdigest()[:32]

    def reused() -> HTTPException:
        return HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            detail="Idempotency-Key was already used with a different request; use a new key",
        )

    with stripe(digest):  # in-process: the replica's own retries wait here instead of racing below
        try:
            earlier = runs.newest_run_tagged({IDEMPOTENCY_TAG: digest})
        except DagsterError as exc:
            raise pipeline_unavailable(exc) from exc
        if earlier is not None:
            if earlier.tags.get(IDEMPOTENCY_REQUEST_TAG, asked) != asked:
                raise reused()
            return StartResponse(workflowId=earlier.tags[PARTITION_TAG], status=position_of(earlier).status)

        def launched(held: dict[str, Any]) -> bool:
            """For a takeover: a launch that cannot be told apart from none counts as launched."""
            try:
                return key_launched(runs, store, str(held.get("workflowId", "")), digest) is not None
            except (DagsterError, BlobStoreError):
                return True

        try:
            held = claim(
                store,
                idempotency_claim(digest),
                {"workflowId": request_id, "asked": asked, "gateway": presence.present()},
                IDEMPOTENCY_CLAIM_STALE_SECONDS,
                settled=launched,
                abandoned=lambda held: _abandoned(presence, held),
            )
        except (BlobStoreError, ClaimError) as exc:
            raise pipeline_unavailable(DagsterUnavailable(f"idempotency claim: {exc}")) from exc
        if not held.won:
            if held.data.get("asked") != asked:
                raise reused()
            try:
                found = key_launched(runs, store, str(held.data.get("workflowId", "")), digest)
            except (DagsterError, BlobStoreError):
                found = None  # cannot tell: retry, never a workflow id that may have nothing behind it
            if found is None:
                raise HTTPException(
                    status.HTTP_503_SERVICE_UNAVAILABLE,
                    detail="A request with this Idempotency-Key is being started; retry shortly for its workflow.",
                    headers={"Retry-After": RETRY_AFTER_LAUNCHING},
                )
            return found
        try:
            return launch({OWNER_TAG: caller, IDEMPOTENCY_TAG: digest, IDEMPOTENCY_REQUEST_TAG: asked})
        except BaseException:
            release(store, held)  # nothing launched: a retry with this key may try again
            raise


def claim_or_unavailable(
    store: BlobStore, name: str, settled: Callable[[dict[str, Any]], bool], presence: Presence
) -> Claim:
    """A cross-replica claim of `name` under this gateway, taken over once its claimant is dead
    and its work not `settled` (503 when the store cannot be asked)."""
    try:
        return claim(
            store,
            name,
            {"gateway": presence.present()},
            IDEMPOTENCY_CLAIM_STALE_SECONDS,
            settled,
            abandoned=lambda held: _abandoned(presence, held),
        )
    except (BlobStoreError, ClaimError) as exc:
        raise pipeline_unavailable(DagsterUnavailable(f"claim {name}: {exc}")) from exc


def _abandoned(presence: Presence, held: dict[str, Any]) -> bool:
    """A claim whose gateway stopped beating; one that names no gateway (made before claims did)
    waits for its stale age."""
    gateway = held.get("gateway")
    return isinstance(gateway, str) and not presence.alive(gateway)


def key_launched(runs: DagsterRuns, store: BlobStore, workflow_id: str, digest: str) -> StartResponse | None:
    """What the launch of the key `digest` made: the workflow's pending start carrying the key
    (its run to come, or a start that ended without one), else the run tagged with it (its own
    workflow id: a takeover's, not the claim's); None when neither exists. The workflow having
    runs is not enough: a generate continuing a request claims that request's id, whose earlier
    runs are not this launch. Raises DagsterError or BlobStoreError when it cannot be told.

    The record is read first: a background launch creates its run, then deletes the record, so a
    launch between the two reads is seen by the second, never missed by both."""
    start = read_start(store, workflow_id, strict=True)
    if start is not None and start.tags.get(IDEMPOTENCY_TAG) == digest:
        return StartResponse(workflowId=workflow_id, status=state_of_start(start).status)
    run = runs.newest_run_tagged({IDEMPOTENCY_TAG: digest})
    if run is None:
        return None
    return StartResponse(workflowId=run.tags.get(PARTITION_TAG, workflow_id), status=position_of(run).status)
