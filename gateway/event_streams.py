"""Open event streams: a cap per caller and in total, and one status watcher per workflow.

Each stream used to read the status on its own every `EVENT_POLL_SECONDS` (a threadpool call,
plus a disconnect check): 3,000 idle streams were 12,000 threadpool calls a second and pushed a
GET's median from 2 ms to 1.95 s. Here a workflow that has listeners has ONE watcher task: it
reads the status off the event loop (threadpool) once a tick, and wakes its listeners only when
what they would send changed. An idle stream is a coroutine waiting on an `asyncio.Event`.

Every method runs on the event loop (the routes are `async def`), so the counts need no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from gateway.dagster_api.errors import DagsterError, public_message
from gateway.schemas import WorkflowState
from gateway.workflow_state import FINAL_STATUSES

log = logging.getLogger(__name__)

# What a 429 suggests: streams end by themselves (final, timeout) or when their client leaves.
RETRY_AFTER_SECONDS = 5
# The `retry:` a stream closed by a shutdown sends: a restarted gateway (or another replica) is
# there in a few seconds, and an EventSource reconnects by itself after this many milliseconds.
SHUTDOWN_RETRY_MS = 3000


@dataclass(frozen=True)
class Snapshot:
    """What the watcher last read: a state, the run being gone (None), or Dagster's error."""

    state: WorkflowState | None
    error: str | None = None


def eta_moved(sent: int | None, now: int | None, since_sent: float) -> bool:
    """Whether a new `etaSeconds` is news: a page counts down by itself from the last one sent,
    so only a change beyond that countdown (3 s, or a tenth) is; a first ETA always is."""
    if now is None:
        return False
    if sent is None:
        return True
    counted_down = sent - since_sent
    return abs(now - counted_down) >= max(3.0, 0.1 * max(sent, 1))


def _news(new: Snapshot, old: Snapshot | None, since: float) -> bool:
    """Whether the listeners must hear of `new`. An ETA that only counts down is no news: without
    this, every running workflow's watch woke all its listeners once a second."""
    if old is None or new.error is not None or new.state is None or old.state is None:
        return new != old or new.error is not None
    if eta_moved(old.state.etaSeconds, new.state.etaSeconds, since):
        return True
    return new.state.model_copy(update={"etaSeconds": None}) != old.state.model_copy(update={"etaSeconds": None})


class StreamLimitReached(Exception):
    """Too many open streams for this caller or in total."""


class Watch:
    """One workflow's shared status poll and the listeners it fans out to."""

    def __init__(self, workflow_id: str, read: Callable[[], WorkflowState | None], poll_seconds: float) -> None:
        self.workflow_id = workflow_id
        self.listeners = 0
        self.snapshot: Snapshot | None = None
        self.version = 0  # bumped on every published snapshot
        self._published_at = time.monotonic()
        self._read = read
        self._poll_seconds = poll_seconds
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def _publish(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._published_at = time.monotonic()
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # wakes every listener waiting on this tick's event, once

    def wake(self) -> None:
        """Wake every listener without a new snapshot (they look at why: the gateway is stopping)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self, seen: int, timeout: float) -> bool:
        """Whether a snapshot newer than version `seen` is there, waiting at most `timeout` s for one."""
        if self.version > seen:
            return True
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout=max(0.0, timeout))
        return self.version > seen

    async def run(self) -> None:
        """Poll while anyone listens; publish what changed (and every error, as the stream reports each)."""
        while self.listeners > 0:
            delay = self._poll_seconds
            try:
                snapshot = Snapshot(await run_in_threadpool(self._read))
            except DagsterError as exc:  # told as GET tells it: Dagster's text (addresses) only in the log
                snapshot = Snapshot(None, error=public_message(exc, log))
                delay = self._poll_seconds * 4
            except Exception:  # e.g. the blob store while reading a result: the listeners must hear of it
                log.exception("event stream: reading the state of %s failed", self.workflow_id)
                snapshot = Snapshot(None, error="the gateway could not read the workflow's state")
                delay = self._poll_seconds * 4
            if _news(snapshot, self.snapshot, time.monotonic() - self._published_at):
                self._publish(snapshot)
            ended = snapshot.error is None and (snapshot.state is None or snapshot.state.status in FINAL_STATUSES)
            if ended:
                return  # the listeners have what they need; a later one starts a new watch
            await asyncio.sleep(delay)


class StreamLease:
    """One open stream's place under the caps and in its workflow's watch; `release` is idempotent."""

    def __init__(self, streams: EventStreams, caller: str) -> None:
        self._streams = streams
        self._caller = caller
        self._watch: Watch | None = None
        self._released = False

    @property
    def draining(self) -> bool:
        """The gateway is shutting down: end the stream with a reconnect hint."""
        return self._streams.draining

    def follow(self, workflow_id: str, read: Callable[[], WorkflowState | None]) -> Watch:
        """Listen to the workflow's shared poll (started on the first listener)."""
        assert self._watch is None and not self._released
        self._watch = self._streams._join(workflow_id, read)
        return self._watch

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._watch is not None:
            self._streams._leave(self._watch)
        self._streams._free(self._caller)


class EventStreams:
    """The app's registry of open streams (owned by the lifespan)."""

    def __init__(self, poll_seconds: float, per_caller: int, total: int) -> None:
        self.poll_seconds = poll_seconds
        self.per_caller = per_caller
        self.total = total
        self._open: Counter[str] = Counter()
        self._total = 0
        self._watches: dict[str, Watch] = {}
        self.draining = False

    def drain(self) -> None:
        """The server is stopping (SIGTERM): every open stream ends now with a `retry:` hint.

        The server waits for responses in flight before it stops, and a stream only ends by itself
        after EVENT_STREAM_MAX_SECONDS: without this, one listener held a shutdown for an hour.
        """
        self.draining = True
        for watch in self._watches.values():
            watch.wake()

    def open(self, caller: str) -> StreamLease:
        """A place for one more stream of `caller`; StreamLimitReached beyond either cap."""
        if self.draining:
            raise StreamLimitReached("the gateway is restarting; reconnect in a few seconds")
        if self._open[caller] >= self.per_caller:
            raise StreamLimitReached(
                f"too many open event streams for this caller (at most {self.per_caller}); "
                "close one, or poll GET /workflow/{workflowId}"
            )
        if self._total >= self.total:
            raise StreamLimitReached(
                f"the gateway has its maximum of {self.total} open event streams; "
                "retry later, or poll GET /workflow/{workflowId}"
            )
        self._open[caller] += 1
        self._total += 1
        return StreamLease(self, caller)

    def open_streams(self) -> int:
        return self._total

    def watched(self) -> list[str]:
        """The workflows whose status is being polled now."""
        return [wid for wid, w in self._watches.items() if w.task is not None and not w.task.done()]

    def _join(self, workflow_id: str, read: Callable[[], WorkflowState | None]) -> Watch:
        watch = self._watches.get(workflow_id)
        if watch is None or watch.task is None or watch.task.done():
            watch = Watch(workflow_id, read, self.poll_seconds)
            self._watches[workflow_id] = watch
        watch.listeners += 1
        if watch.task is None:
            watch.task = asyncio.create_task(self._watch(watch), name=f"event-watch {workflow_id}")
        return watch

    async def _watch(self, watch: Watch) -> None:
        try:
            await watch.run()
        finally:
            if self._watches.get(watch.workflow_id) is watch:
                del self._watches[watch.workflow_id]

    def _leave(self, watch: Watch) -> None:
        watch.listeners -= 1  # the watch's loop sees 0 after its sleep and ends

    def _free(self, caller: str) -> None:
        self._total -= 1
        self._open[caller] -= 1
        if self._open[caller] <= 0:
            del self._open[caller]

    async def close(self) -> None:
        """Stop every watch (the app is shutting down)."""
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watches.clear()
