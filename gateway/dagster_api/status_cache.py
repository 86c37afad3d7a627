"""Each request's newest run, answered from memory while it may be: what GET and the event
stream ask on every poll.

A frontend polls every couple of seconds and many may poll: without this every poll is a read of
Dagster (~100+ ms of webserver time over GraphQL), and a crowd of pollers slows Dagster for
everyone, launches included. Three rules keep the answers true:

- A running run is kept `ttl` seconds; one that expired is answered at once while one background
  read refreshes it (stale-while-revalidate), but only while younger than `stale_limit` (half a
  frontend poll): an older one predates the poller's previous poll, and the run's end would reach
  it one poll late. Polls that queued behind a read share its answer.
- A run that ended is not kept as the answer by age: another gateway replica may launch a newer
  run of the request at any moment (a generate, a rerun from the UI), and this replica never hears
  of it. With a cheap id read (`check_ended_by_id`, the storage source) it is kept and checked by
  the id of the request's newest run at every poll: one indexed read, where reading the run with
  its steps again cost ~5 ms of CPU. A run removed (retention) is no longer the newest: dropped.
  Polls of one id that arrive together share that read, as they share a run's read: a poll takes
  the answer of an id read asked after it arrived (a crowd polling one finished request did one
  read each, ~0.7 ms of CPU, most of it SQLAlchemy building the query).
  A FAILURE that Dagster may still retry (`RunInfo.retry_may_follow`) is not kept so: its
  `will_retry` tag can turn to "false" with no newer run (the retry daemon could not launch the
  retry: its code server was down), and kept by its id it answered RUNNING for good (the soak).
- `forget` (a launch, a cancel of this replica) drops what is known of the request, and an older
  read still in flight cannot put it back. A run's end told by its run worker (`run_ended`,
  jewel_dagster/run_end_notices.py) forgets the request too: the next poll reads the end rather
  than the kept running state until it expires (~0.13 s on average, half the TTL).
- A kept run waiting in Dagster's run queue (QUEUED) changes nothing a poll shows but its status
  (its planned assets are written before it is queued, no step runs before it leaves), so with a
  cheap read of the queued runs' ids (`queued_run_ids`, the storage source) its refresh asks only
  whether it is still queued: one read of the ids of every queued run, shared by the refreshes of
  every queued request for `ttl` (an answer that old is what the TTL allows anyway). A burst keeps
  most of its requests in the queue and a frontend polls each of them: each of those refreshes read
  the run and its events (~4 ms of CPU; benchmarks.burst, 30 requests: 56 % of the gateway's busy
  samples were these refreshes, py-spy). Like every running run, a queued one is not superseded.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable

from gateway.dagster_api.errors import DagsterError
from gateway.dagster_api.models import RunInfo

_SETTLED = frozenset({"SUCCESS", "FAILURE", "CANCELED", "CANCELING"})
_ENDED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})  # a run in these states never changes again
MAX_IDS = 10_000  # ids kept by each map: beyond, the oldest go (ids nobody polls any more)
ENDING_SECONDS = 2.0  # after a run-end notice, how long a running state read is not kept (`run_ended`)

# request id -> its newest run (None: no run), read from the source; raises DagsterError.
ReadLatest = Callable[[str], RunInfo | None]
# request id -> the id of its newest run: one indexed read (the storage source only).
ReadLatestId = Callable[[str], str | None]
# The ids of every run in Dagster's run queue (QUEUED): one indexed read (the storage source only).
ReadQueuedIds = Callable[[], frozenset[str]]
QUEUED = "QUEUED"


class StatusCache:
    def __init__(
        self,
        read: ReadLatest,
        ttl: Callable[[], float],
        stale_limit: Callable[[], float],
        newest_run_id: ReadLatestId | None = None,
        queued_run_ids: ReadQueuedIds | None = None,
    ) -> None:
        self._read = read
        self._queued_run_ids = queued_run_ids
        self._queued: tuple[float, frozenset[str]] | None = None  # the last queued-ids read, when asked
        self._queued_lock = threading.Lock()
        self._ttl = ttl
        self._stale_limit = stale_limit
        self._newest_run_id = newest_run_id
        self._status: dict[str, tuple[float, RunInfo | None]] = {}  # running runs, by when they were asked
        # The newest answer of each id and when its question was asked, final states included:
        # only for polls that waited while it was being asked (never answered by age).
        self._answers: dict[str, tuple[float, RunInfo | None]] = {}
        self._ended: dict[str, RunInfo] = {}  # each id's newest run once it ended, checked by its id
        self._locks: dict[str, threading.Lock] = {}
        # The last newest-run-id read of each ended id, and when it was asked (shared, see rules).
        self._id_answers: dict[str, tuple[float, str | None]] = {}
        self._id_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._refreshing: set[str] = set()
        self._epochs: dict[str, int] = {}  # bumped by forget(), so an older refresh cannot undo it
        self._ending: dict[str, float] = {}  # requests whose run was told ended -> until when (`run_ended`)
        self.clock: Callable[[], float] = time.monotonic  # a test moves it by hand
        self._refresher = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="status-refresh")

    def close(self) -> None:
        self._refresher.shutdown(wait=False, cancel_futures=True)

    def latest(self, request_id: str) -> RunInfo | None:
        """The request's newest run, at most `ttl` old (see the module's rules)."""
        ttl = self._ttl()
        if ttl <= 0:
            return self._read(request_id)
        ended = self._ended.get(request_id)
        if ended is not None and self._newest_run_id is not None:
            if self._newest_id(request_id, self._newest_run_id, self.clock()) == ended.run_id:
                return ended
            with self._guard:
                self._ended.pop(request_id, None)
        arrived = self.clock()
        young = self._young(request_id, ttl, arrived)
        if young is not None:
            return young
        with self._guard:
            lock = self._locks.setdefault(request_id, threading.Lock())
        with lock:
            # A poll that waited here takes the answer of a question asked after it arrived,
            # final states included: it is as new as asking again. Without this, every waiter
            # asked again in turn, and under 100 pollers a read slower than the TTL made each
            # answer stale on arrival: GET fell to ~80/s at a median of ~1 s (benchmarks.status).
            answer = self._answers.get(request_id)
            if answer is not None and answer[0] > arrived:
                return answer[1]
            hit = self._status.get(request_id)
            if hit is not None and self.clock() - hit[0] < ttl:
                return hit[1]
            return self._refresh(request_id)

    def _newest_id(self, request_id: str, read: ReadLatestId, arrived: float) -> str | None:
        """The id of the request's newest run, from a read asked after `arrived`: the answer of a
        read another poll started after this one arrived is as new as reading again."""
        with self._guard:
            lock = self._id_locks.setdefault(request_id, threading.Lock())
            epoch = self._epochs.get(request_id, 0)
        with lock:
            known = self._id_answers.get(request_id)
            if known is not None and known[0] > arrived:
                return known[1]
            asked = self.clock()
            newest = read(request_id)
            with self._guard:
                if self._epochs.get(request_id, 0) == epoch:  # not forgotten meanwhile (a launch)
                    if len(self._id_answers) >= MAX_IDS:
                        self._id_answers.clear()
                        self._id_locks = {request_id: lock}
                    self._id_answers[request_id] = (asked, newest)
            return newest

    def remembered(self, request_id: str) -> RunInfo | None:
        """The running run `latest` would answer from memory without reading anything (fresh, or
        young enough to answer while a refresh runs); None when `latest` would read: an ended
        run (checked by its id), none kept, or too old. Never blocks: GET asks it on the event loop."""
        ttl = self._ttl()
        if ttl <= 0 or (request_id in self._ended and self._newest_run_id is not None):  # as `latest` asks
            return None
        return self._young(request_id, ttl, self.clock())

    def _young(self, request_id: str, ttl: float, arrived: float) -> RunInfo | None:
        """The kept running run while it may be answered (see the module's rules), else None."""
        hit = self._status.get(request_id)
        if hit is not None:
            age = arrived - hit[0]
            if age < ttl:
                return hit[1]
            if age < self._stale_limit():
                self._refresh_soon(request_id)
                return hit[1]
        return None

    def _queued_ids(self, arrived: float) -> tuple[float, frozenset[str]] | None:
        """The ids of the queued runs and when they were asked: the last read while it is younger
        than `ttl` (or was asked after `arrived`), else a new one. None without a queued-ids reader."""
        if self._queued_run_ids is None:
            return None
        with self._queued_lock:
            known = self._queued
            if known is not None and (known[0] > arrived or arrived - known[0] < self._ttl()):
                return known
            asked = self.clock()
            self._queued = (asked, self._queued_run_ids())
            return self._queued

    def _still_queued(self, request_id: str, arrived: float) -> tuple[float, RunInfo] | None:
        """The kept run and when it was seen queued, while it still is (see the module's rules)."""
        kept = self._status.get(request_id)
        if kept is None or kept[1] is None or kept[1].status != QUEUED:
            return None
        queued = self._queued_ids(arrived)
        if queued is None or kept[1].run_id not in queued[1]:
            return None
        return max(kept[0], queued[0]), kept[1]

    def _refresh(self, request_id: str) -> RunInfo | None:
        epoch = self._epochs.get(request_id, 0)
        asked = self.clock()  # the answer is as old as the question, not as its arrival
        confirmed = self._still_queued(request_id, asked)
        run: RunInfo | None
        if confirmed is not None:
            asked, run = confirmed
        else:
            run = self._read(request_id)
        with self._guard:
            if self._epochs.get(request_id, 0) != epoch:
                return run  # forgotten meanwhile (a launch): this answer may predate the new run
            self._answers[request_id] = (asked, run)
            if len(self._answers) > MAX_IDS:  # polls waiting on a refresh are few: forget them all
                self._answers = {request_id: (asked, run)}
            if run is not None and run.status in _ENDED and not run.retry_may_follow(time.time()):
                self._ended[request_id] = run
                if len(self._ended) > MAX_IDS:
                    self._ended = {request_id: run}
            ending = self._ending.get(request_id)
            if ending is not None and (run is None or run.status in _SETTLED or asked > ending):
                self._ending.pop(request_id, None)
            elif ending is not None:
                return run  # told it ended: not kept, the next poll reads again (see `run_ended`)
            if run is None or run.status in _SETTLED:
                # Only a running run is kept by age: it cannot be superseded (a generate on a
                # running request is refused). Callers stop polling an ended workflow anyway.
                self._status.pop(request_id, None)
                return run
            self._status[request_id] = (asked, run)
            if len(self._status) > MAX_IDS:  # forget the oldest half
                for key in sorted(self._status, key=lambda k: self._status[k][0])[: MAX_IDS // 2]:
                    self._status.pop(key, None)
                    self._locks.pop(key, None)
                    self._epochs.pop(key, None)
        return run

    def _refresh_soon(self, request_id: str) -> None:
        with self._guard:
            if request_id in self._refreshing:
                return
            self._refreshing.add(request_id)

        def refresh() -> None:
            try:
                self._refresh(request_id)
            except DagsterError:
                pass  # the entry ages out; the next poll after that asks (and reports) itself
            finally:
                with self._guard:
                    self._refreshing.discard(request_id)

        self._refresher.submit(refresh)

    def run_ended(self, run_id: str) -> int:
        """A run's end, told by the process that stored it (jewel_dagster/run_end_notices.py):
        every request whose kept running run it is, is forgotten, and for `ENDING_SECONDS` a
        running state read of it is not kept: the notice leaves with the run's end event, before
        Dagster writes the run's status (`handle_new_event` stores the event, then updates the run
        storage), so a read right after it may still say STARTED. The polls then read until the
        end shows. How many requests were forgotten."""
        with self._guard:
            requests = [rid for rid, (_, run) in self._status.items() if run is not None and run.run_id == run_id]
        for request_id in requests:
            self.forget(request_id)
            with self._guard:
                if len(self._ending) >= MAX_IDS:  # requests nobody polled after their end
                    self._ending.clear()
                self._ending[request_id] = self.clock() + ENDING_SECONDS
        return len(requests)

    def forget(self, request_id: str) -> None:
        """Drop what is known of the request after an action that changes it (a launch, a cancel)."""
        with self._guard:
            self._status.pop(request_id, None)
            self._answers.pop(request_id, None)
            self._ended.pop(request_id, None)
            self._id_answers.pop(request_id, None)
            self._epochs[request_id] = self._epochs.get(request_id, 0) + 1
            self._ending.pop(request_id, None)
            if len(self._epochs) > 2 * MAX_IDS:  # ids nobody polls; a refresh in flight is rarer still
                self._epochs = {request_id: self._epochs[request_id]}
