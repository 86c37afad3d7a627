"""Claims in the shared blob store: whatever the number of gateway replicas, one of them wins.

Gateway replicas share no memory, but they share the blob store, and a blob store can create a
blob only if none is there, atomically (Azure: `If-None-Match: *`; a folder: a hard link). A
claim is such a blob: `claims/<name>.<generation>.json` holding what the winner decided (a
workflow id, a digest of the request). Used for:

- idempotency keys: the first replica to claim `(caller, Idempotency-Key)` launches; every other
  one answers the workflow its launch made once a run or pending start carries the key (503 with
  Retry-After until then);
- continuing a request (`/workflow/generate`): one launch per run it continues, the others 409;
- webhooks: one delivery per finished run, whichever replicas watch Dagster.

A winner that could not finish (its launch failed) releases the claim; one that died never does,
so a claim whose work is not `settled` is taken over by claiming the next generation, which again
only one replica can create, once it is older than `stale_after` or, sooner, once `abandoned`
says its claimant is gone (a gateway whose heartbeat stopped: gateway/starts.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jewel_dagster.resources.blob_store import BlobNotFoundError, BlobStore
from jewel_dagster.storage_layout import claim_path

_MAX_GENERATIONS = 50
_RELEASED = "released"


class ClaimError(RuntimeError):
    """The claim's generations ran out: something keeps taking the same work over."""


@dataclass(frozen=True)
class Claim:
    path: str
    data: dict[str, Any]  # the winner's payload (ours when won)
    won: bool


def claim(
    store: BlobStore,
    name: str,
    payload: dict[str, Any],
    stale_after: float,
    settled: Callable[[dict[str, Any]], bool] = lambda held: True,
    now: Callable[[], float] = time.time,
    abandoned: Callable[[dict[str, Any]], bool] = lambda held: False,
) -> Claim:
    """Claim ``name`` with ``payload``; a claim held by another is answered with its payload.

    A held claim is taken over only when it was released, or when ``settled(held)`` says its work
    never happened and it is older than ``stale_after`` seconds or ``abandoned(held)``."""
    generation, tries = 0, 0
    while generation < _MAX_GENERATIONS and tries < 2 * _MAX_GENERATIONS:
        tries += 1
        path = claim_path(name, generation)
        mine = {**payload, "claimedAt": now()}
        if store.create_path(path, json.dumps(mine).encode(), "application/json"):
            return Claim(path, mine, True)
        try:
            held = json.loads(store.get_path(path))
        except BlobNotFoundError:  # deleted meanwhile: that generation is free again
            continue
        if not held.get(_RELEASED):
            young = now() - float(held.get("claimedAt", 0)) < stale_after
            if (young and not abandoned(held)) or settled(held):
                return Claim(path, held, False)
        generation += 1
    raise ClaimError(f"claim {name!r}: {_MAX_GENERATIONS} generations taken")


def release(store: BlobStore, won: Claim) -> None:
    """Give a won claim up (the work did not happen): the next claimant takes the next generation."""
    store.put_path(won.path, json.dumps({**won.data, _RELEASED: True}).encode(), "application/json")
