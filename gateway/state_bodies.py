"""GET /workflow/{id}'s answer as JSON bytes, encoded as FastAPI encodes the route's response
model, and the bodies of finished requests kept per run id.

A finished request's body does not change (its run ended; a newer run has another id), but a
COMPLETED one is ~715 KB of base64 images that pydantic validated and serialised again at every
poll (~5 ms of CPU a GET). Kept encoded, a GET answers it as it is. Two bounds:

- bytes (`STATE_BODY_CACHE_MB`): least recently answered bodies go first;
- age (`STATE_BODY_CACHE_SECONDS`, at most half of `RESULT_URL_MINUTES`): a COMPLETED body carries
  signed result URLs made when it was encoded, valid for `RESULT_URL_MINUTES`; a body kept longer
  would hand out URLs about to expire (answered fresh, one is valid for its whole lifetime).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from pydantic import TypeAdapter

from gateway.schemas import WorkflowState
from gateway.status import WorkflowPosition

_STATE = TypeAdapter(WorkflowState)


def encode_state(state: WorkflowState) -> bytes:
    """The body FastAPI answers for `response_model=WorkflowState, response_model_exclude_none=True`:
    its fast path is this `TypeAdapter.dump_json` (tests/unit/test_get_bodies.py compares them)."""
    return _STATE.dump_json(state, by_alias=True, exclude_none=True)


def encode_progress(
    workflow_id: str, position: WorkflowPosition, queue_position: int | None = None, eta_seconds: int | None = None
) -> bytes:
    """A running state's body without building and validating a model: the four fields in the
    model's order, compact as pydantic writes them (ids and steps are ASCII, progress an int), then
    `queuePosition` and `etaSeconds` when known (the model's last fields; None is left out)."""
    fields: dict[str, object] = {
        "workflowId": workflow_id,
        "status": position.status,
        "progress": position.progress,
        "currentStep": position.current_step,
    }
    if queue_position is not None:
        fields["queuePosition"] = queue_position
    if eta_seconds is not None:
        fields["etaSeconds"] = eta_seconds
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


class FinishedBodies:
    """Encoded bodies of finished runs by run id: an LRU bounded in bytes and by age."""

    def __init__(self, max_bytes: int, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_bytes = max_bytes
        self._max_age = max_age
        self._clock = clock
        self._bodies: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Bytes kept."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._bodies)

    def get(self, run_id: str) -> bytes | None:
        """The run's body when one younger than the age bound is kept."""
        with self._lock:
            kept = self._bodies.get(run_id)
            if kept is None:
                return None
            if self._clock() - kept[0] >= self._max_age:
                self._drop(run_id)
                return None
            self._bodies.move_to_end(run_id)
            return kept[1]

    def put(self, run_id: str, body: bytes) -> None:
        """Keep the body (one larger than the whole bound is not kept), the oldest answered go."""
        if len(body) > self._max_bytes or self._max_age <= 0:
            return
        with self._lock:
            self._drop(run_id)
            self._bodies[run_id] = (self._clock(), body)
            self._bytes += len(body)
            while self._bytes > self._max_bytes:
                self._drop(next(iter(self._bodies)))

    def _drop(self, run_id: str) -> None:
        kept = self._bodies.pop(run_id, None)
        if kept is not None:
            self._bytes -= len(kept[1])
