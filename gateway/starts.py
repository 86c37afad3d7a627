"""Starts off the request path (START_IN_BACKGROUND): the start call stores the upload and a
*pending start*, and answers RUNNING at once; a launcher in the gateway adds the partition and
submits the run.

Why: the partition and the launch are GraphQL calls to dagster-webserver, and under load (many
starts, runs in flight) a start call queued behind the launches in flight for seconds
(`benchmarks.load_start`: p50 11.7 s). Accepting a request needs only the blob store.

A pending start is a small JSON blob, `starts/<workflow id>.json`, in the blob store every
gateway replica shares: the owner (caller), the job, its run config and run tags (with the launch
tag that tells this launch's run apart), the blobs stored for it, and which gateway launches it.
It lives until the run exists (then it is deleted: from there on Dagster answers for the
workflow), or it ends the workflow without a run:

- `failed`: Dagster stayed unreachable for START_GIVE_UP_SECONDS (or refused the launch); the
  upload, strokes and webhook URL are deleted (nothing half-created), GET answers FAILED;
- `cancelled`: cancelled before its run existed; GET answers CANCELLED.

A cancel and a launch meet through two writes read in opposite orders: the launcher announces a
launch in the record (`attempts` >= 1) and then reads the cancel blob; the cancel route writes
the cancel blob and then reads the record. Whichever acts second sees the other. A cancel that
finds no launch announced is final at once (the launcher will skip the start); one that finds a
launch under way is not, until the launcher closes the record or the run it launched stops: till
then GET answers RUNNING (`launch_under_way`), never CANCELLED and then RUNNING again.

Ended records are removed after RETENTION_DAYS (when that is > 0).

Replicas: each gateway writes a heartbeat (`start-gateways/<gateway id>.json`) every few
seconds. A pending start whose gateway's heartbeat is older than START_TAKEOVER_SECONDS (it
died, or stopped with starts queued) is taken over by another gateway's sweep, through a claim
(gateway/claims.py) that only one replica wins. Never launched twice: the taker first looks for
a run with the record's launch tag (the dead gateway may have launched it before dying), and the
owner checks before each attempt that the record is still its own.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gateway.claims import ClaimError, claim
from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError, DagsterUnavailable
from gateway.observability import logs
from gateway.schemas import WorkflowState
from gateway.settings import GatewaySettings
from jewel_dagster.contract import LAUNCH_TAG, REQUEST_ID_TAG, STEP_PROGRESS
from jewel_dagster.resources.blob_store import BlobNotFoundError, BlobStore, BlobStoreError
from jewel_dagster.storage_layout import (
    PENDING_START_PREFIX,
    pending_start_id,
    pending_start_path,
    start_cancel_path,
    start_heartbeat_path,
    start_takeover_claim,
)

FIRST_STEP = "UPLOADING_IMAGE"  # the reference's first step (5 %): where a request is until its run exists
# A start call trusts a Dagster answer this recent (launches under load give one every moment)
# instead of asking Dagster again.
REACHABLE_SECONDS = 2.0
_BACKOFF_FIRST, _BACKOFF_MAX = 0.25, 5.0
_WAKE = ""  # put in the queue to wake the launch threads when stopping
log = logging.getLogger("gateway.starts")

StartState = Literal["pending", "failed", "cancelled"]
# Dagster run statuses past which a terminate has nothing to stop.
_STOPPED_RUN_STATUSES = frozenset({"SUCCESS", "FAILURE", "CANCELED", "CANCELING"})


@dataclass
class PendingStart:
    workflowId: str
    owner: str
    job: str
    runConfig: dict[str, Any]
    tags: dict[str, str]  # the run's tags, the launch tag included
    gateway: str  # the id of the gateway that launches it
    createdAt: float = field(default_factory=time.time)
    blobs: list[str] = field(default_factory=list)  # URIs stored for it: deleted if it never starts
    state: StartState = "pending"
    error: str | None = None
    endedAt: float | None = None
    attempts: int = 0  # > 0: a launch may have happened; look for its run before launching

    @property
    def launch_tag(self) -> str:
        return self.tags[LAUNCH_TAG]

    @property
    def launch_under_way(self) -> bool:
        """A launch was announced and the record is not closed: its run may still appear, so a
        cancel of it is not final yet (see the module's docstring)."""
        return self.attempts > 0 and self.endedAt is None and self.state != "failed"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    def but(self, **changes: Any) -> PendingStart:
        return PendingStart(**{**asdict(self), **changes})


def read_start(store: BlobStore, workflow_id: str, strict: bool = False) -> PendingStart | None:
    """The workflow's pending start (state `cancelled` once a cancel blob exists), or None.
    `strict`: a store that does not answer raises BlobStoreError instead of reading as none (for
    a caller that must not take "cannot tell" for "no start": an Idempotency-Key's takeover).

    A pending record with a cancel blob is read again after the blob was seen: read before it,
    it may miss a launch announced in between (and the cancel then look final while the launcher,
    which read no cancel after its announce, launches the run)."""
    start = _load_start(store, workflow_id, strict)
    if start is None or start.state != "pending" or not store.exists_path(start_cancel_path(workflow_id)):
        return start
    start = _load_start(store, workflow_id, strict)
    if start is not None and start.state == "pending":
        start.state = "cancelled"
    return start


def _load_start(store: BlobStore, workflow_id: str, strict: bool = False) -> PendingStart | None:
    try:
        return PendingStart(**json.loads(store.get_path(pending_start_path(workflow_id))))
    except BlobNotFoundError:
        return None
    except BlobStoreError:
        if strict:
            raise
        return None
    except (ValueError, TypeError):
        return None


def write_start(store: BlobStore, start: PendingStart) -> None:
    store.put_path(pending_start_path(start.workflowId), start.to_json(), "application/json")


def mark_cancelled(store: BlobStore, workflow_id: str) -> None:
    store.create_path(start_cancel_path(workflow_id), b"{}", "application/json")


def forget_start(store: BlobStore, workflow_id: str) -> None:
    """The run exists (or the record expired): the record and its cancel blob go."""
    store.delete_path(pending_start_path(workflow_id))
    store.delete_path(start_cancel_path(workflow_id))


def state_of_start(start: PendingStart) -> WorkflowState:
    """GET's answer for a workflow whose run does not exist (yet): reference statuses and steps only."""
    progress = STEP_PROGRESS[FIRST_STEP]
    if start.state == "failed":
        return WorkflowState(
            workflowId=start.workflowId,
            status="FAILED",
            progress=progress,
            currentStep=FIRST_STEP,
            failedStep=FIRST_STEP,
            error=start.error or "the workflow could not be started; start it again",
        )
    # A cancelled start whose launch is under way may still get a run: RUNNING until that is settled.
    cancelled = start.state == "cancelled" and not start.launch_under_way
    status: Literal["RUNNING", "CANCELLED"] = "CANCELLED" if cancelled else "RUNNING"
    return WorkflowState(workflowId=start.workflowId, status=status, progress=progress, currentStep=FIRST_STEP)


def run_exists(runs: DagsterRuns, workflow_id: str, launch_tag: str) -> bool:
    """Whether the newest run of the workflow is the one launched with `launch_tag`; raises
    DagsterError when Dagster cannot tell (the caller must then not launch)."""
    run = runs.latest_run(workflow_id)
    return run is not None and run.tags.get(LAUNCH_TAG) == launch_tag


class _Stopped(Exception):
    """The gateway is stopping: the start stays pending for the next gateway to take over."""


class StartLauncher:
    """This gateway's launcher of pending starts: MAX_PARALLEL_LAUNCHES threads that launch what
    `submit` queues, and a sweeper that keeps the heartbeat fresh, takes over the pending starts of
    dead gateways, and removes ended records past retention."""

    def __init__(
        self,
        settings: GatewaySettings,
        store: BlobStore,
        runs: Callable[[], DagsterRuns],
        clock: Callable[[], float] = time.time,
        on_ended: Callable[[PendingStart], None] | None = None,
    ) -> None:
        self.gateway_id = uuid.uuid4().hex
        self._settings = settings
        self._store = store
        self._runs = runs  # app.state.runs, read at each use (tests swap in a fake Dagster)
        self._clock = clock
        # Told each start it ends without a run, FAILED or CANCELLED (the webhook dispatcher's: a
        # webhook promises the final state, and such a start has no run for the dispatcher to find).
        self._on_ended = on_ended
        self._queue: queue.Queue[str] = queue.Queue()
        self._mine: set[str] = set()  # workflow ids queued or being launched here
        self._mine_lock = threading.Lock()
        self._ended: set[str] = set()  # ended records seen by the sweep (not read again)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._down_since: float | None = None  # when Dagster stopped answering the launches
        self._beaten_at: float | None = None  # when this gateway last wrote its heartbeat

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        for index in range(self._settings.max_parallel_launches):
            self._spawn(self._work, f"start-launcher-{index}")
        self._spawn(self._sweep_loop, "start-sweeper")
        self._spawn(self._beat_loop, "start-heartbeat")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, drain_seconds: float = 10.0) -> None:
        """Launch what is queued for up to `drain_seconds`, then stop. If every thread ended, the
        heartbeat is removed so another gateway (or this one restarted) takes the rest over at its
        next sweep; otherwise it goes stale and they take over after START_TAKEOVER_SECONDS."""
        deadline = time.monotonic() + drain_seconds
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        for _ in self._threads:
            self._queue.put(_WAKE)
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        if self._beaten_at is not None and not any(thread.is_alive() for thread in self._threads):
            try:
                self._store.delete_path(start_heartbeat_path(self.gateway_id))
            except BlobStoreError:
                pass

    def present(self) -> str:
        """This gateway's id, its heartbeat made fresh: a claim made under this id (an
        Idempotency-Key's, a continued run's) stays this gateway's while it beats, and another
        replica takes it over soon after it stops (`alive`), not after the claim's long stale age."""
        self._beat(due_only=True)
        return self.gateway_id

    def alive(self, gateway_id: str) -> bool:
        """Whether that gateway's heartbeat is fresh (unreadable store: yes, leave its work alone)."""
        return self._alive(gateway_id, {self.gateway_id: True})

    def pending(self) -> int:
        """Starts queued or being launched by this gateway (the `jewel_starts_pending` gauge)."""
        return len(self._mine)

    def submit(self, workflow_id: str) -> None:
        """Queue a start whose record (with this gateway's id) is stored."""
        with self._mine_lock:
            self._mine.add(workflow_id)
        self._beat(due_only=True)
        self._queue.put(workflow_id)

    # ------------------------------------------------------------------ launching

    def _work(self) -> None:
        while not self._stop.is_set():
            workflow_id = self._queue.get()
            if workflow_id == _WAKE:
                continue
            try:
                self._launch(workflow_id)
            except _Stopped:
                pass
            except Exception:  # one bad record must not end the thread, nor stay RUNNING forever
                log.exception("pending start %s", workflow_id)
                self._fail_after_error(workflow_id)
            finally:
                with self._mine_lock:
                    self._mine.discard(workflow_id)

    def _own(self, workflow_id: str, runs: DagsterRuns) -> PendingStart | None:
        """The record, while it is pending and still this gateway's to launch; a cancelled one is
        ended here (its blobs dropped; the run a launch before may have made is stopped)."""
        start = read_start(self._store, workflow_id)
        if start is None or start.gateway != self.gateway_id or start.endedAt is not None:
            return None
        if start.state == "cancelled":
            if start.attempts > 0:  # taken over: the dead gateway may have launched it
                self._end_cancelled(start, runs)
            else:
                self._close_cancelled(start)
            return None
        return start if start.state == "pending" else None

    def _launch(self, workflow_id: str) -> None:
        runs = self._runs()
        start = self._own(workflow_id, runs)
        if start is None:
            return
        # The log lines of this launch carry the start call's request id, as they did when the
        # launch happened inside the call.
        logs.start_request(start.tags.get(REQUEST_ID_TAG) or logs.request_id_from(None))
        logs.bind(workflowId=workflow_id)
        look_first = start.attempts > 0  # taken over, or launched before: its run decides
        start = self._announce(start)
        if start is None:
            return
        added = False
        while True:
            if self._stop.is_set():
                raise _Stopped
            error: DagsterError | None = None
            with runs.launch_slots:
                try:
                    if not (look_first and run_exists(runs, workflow_id, start.launch_tag)):
                        look_first = True  # from here on, a launch may have gone through
                        runs.add_partition(workflow_id)
                        added = True
                        logs.bind(runId=runs.launch(start.job, workflow_id, start.runConfig, start.tags))
                except DagsterError as exc:
                    error = exc
            if error is None:
                break
            if not isinstance(error, DagsterUnavailable):
                self._down_since = None  # Dagster answered: it refused
                if self._exists_now(runs, start):
                    break
                error_id = uuid.uuid4().hex[:12]
                log.error("error %s: the start of %s was refused: %s", error_id, workflow_id, error)
                message = f"The pipeline refused to start this workflow (error id {error_id}); start it again."
                return self._give_up(start, runs, added, message)
            self._down_since = self._down_since or time.monotonic()
            start = start.but(attempts=start.attempts + 1)
            if self._down_for() > self._settings.start_give_up_seconds:
                if self._exists_now(runs, start):
                    break
                return self._give_up(start, runs, added, self._unreachable_message())
            log.warning("start of %s: Dagster did not answer (attempt %d): %s", workflow_id, start.attempts, error)
            self._stop.wait(min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (start.attempts - 1)))
            current = read_start(self._store, workflow_id)
            if current is None or current.gateway != self.gateway_id or current.state == "failed":
                return  # taken over while we waited
            if current.state == "cancelled":
                return self._end_cancelled(start, runs)
            start = current.but(attempts=start.attempts)
        self._down_since = None
        self._launched(start, runs)

    def _announce(self, start: PendingStart) -> PendingStart | None:
        """Record that a launch may happen from now on (attempts >= 1), then look for a cancel
        once more; None when one came (the record is closed: the run will never exist).

        The cancel route writes its cancel blob, then reads this record: whichever comes second
        sees the other's write (see the module's docstring). Without it a cancel answered
        CANCELLED while this thread was launching, and GET then said RUNNING for seconds."""
        announced = start.but(attempts=max(start.attempts, 1))
        write_start(self._store, announced)
        if self._store.exists_path(start_cancel_path(start.workflowId)):
            self._close_cancelled(announced)
            return None
        return announced

    def _end_cancelled(self, start: PendingStart, runs: DagsterRuns) -> None:
        """A cancel came while the launch was being retried: an attempt Dagster did not answer
        may have launched the run all the same. Stop that run if it exists; close the record only
        once Dagster said it does not (a closed record reads CANCELLED, and a run found later
        would read RUNNING again). Asked until START_GIVE_UP_SECONDS of Dagster away."""
        attempt = 0
        while True:
            try:
                exists = run_exists(runs, start.workflowId, start.launch_tag)
            except DagsterError as exc:
                attempt += 1
                self._down_since = self._down_since or time.monotonic()
                if self._stop.is_set():
                    raise _Stopped from exc
                if self._down_for() > self._settings.start_give_up_seconds:
                    log.warning("start of %s: cancelled; Dagster cannot tell if it launched: %s", start.workflowId, exc)
                    self._close_cancelled(start)
                    return
                self._stop.wait(min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (attempt - 1)))
                continue
            self._down_since = None
            if exists:
                self._launched(start, runs)  # it sees the cancel: terminates the run
            else:
                self._close_cancelled(start)
            return

    def _fail_after_error(self, workflow_id: str) -> None:
        try:
            start = self._own(workflow_id, self._runs())
            if start is not None and not self._exists_now(self._runs(), start):
                error_id = uuid.uuid4().hex[:12]
                log.error("error %s: the start of %s failed in the gateway", error_id, workflow_id)
                message = f"The workflow could not be started (error id {error_id}); start it again."
                self._give_up(start, self._runs(), False, message)
        except Exception:
            log.exception("pending start %s: could not record its failure", workflow_id)

    def _exists_now(self, runs: DagsterRuns, start: PendingStart) -> bool:
        try:
            return run_exists(runs, start.workflowId, start.launch_tag)
        except DagsterError:
            return False

    def _launched(self, start: PendingStart, runs: DagsterRuns) -> None:
        """The run exists: Dagster answers for the workflow from now on, so the record goes. A
        cancel that came meanwhile terminates the run (the cancel route does the same when it
        finds the run: whichever sees the other's write acts)."""
        workflow_id = start.workflowId
        runs.forget(workflow_id)
        if self._store.exists_path(start_cancel_path(workflow_id)):
            self._terminate_launched(start, runs)
            runs.forget(workflow_id)
        forget_start(self._store, workflow_id)
        log.info("launched %s", start.job, extra=logs.fields(job=start.job))

    def _terminate_launched(self, start: PendingStart, runs: DagsterRuns, seconds: float = 60.0) -> None:
        """Stop the run a cancelled start launched. Dagster refuses to terminate a run while it is
        STARTING: asked once, such a run went on RUNNING (and could complete) after the API had
        answered CANCELLED. So ask again every half second until Dagster takes it or the run ended,
        for up to ``seconds``. A run that FAILED with Dagster's retry of it coming has not ended
        the request: the retry (it keeps the run's tags, the launch tag too) is waited for and
        stopped in turn; taken as stopped, the retry ran on after the cancel."""
        workflow_id = start.workflowId
        deadline = time.monotonic() + seconds
        while True:
            try:
                run = runs.latest_run(workflow_id)
                if run is None or run.tags.get(LAUNCH_TAG) != start.launch_tag:
                    return
                if run.status not in _STOPPED_RUN_STATUSES:
                    runs.terminate(run.run_id)
                    return
                if not run.retry_may_follow(time.time()):
                    return
                waiting = f"the retry of its failed run {run.run_id} did not come"
            except DagsterError as exc:
                waiting = f"terminate failed: {exc}"
            if time.monotonic() > deadline:
                log.warning("start of %s: cancelled while launching; %s", workflow_id, waiting)
                return
            time.sleep(0.5)

    def _down_for(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def _unreachable_message(self) -> str:
        return (
            f"The pipeline (Dagster) could not be reached for {self._settings.start_give_up_seconds:g} s to start this "
            "workflow; nothing was kept: start it again."
        )

    def _give_up(self, start: PendingStart, runs: DagsterRuns, added: bool, message: str) -> None:
        """Nothing half-created: the partition (best effort), the upload, strokes and webhook URL
        go; the record stays, FAILED with a message for the person, until retention."""
        if added:
            runs.delete_partition(start.workflowId)
        failed = start.but(state="failed", error=message, endedAt=self._clock())
        self._tell_ended(failed)
        self._drop_blobs(start)
        write_start(self._store, failed)
        log.error("start of %s given up: %s", start.workflowId, message)

    def _close_cancelled(self, start: PendingStart) -> None:
        closed = start.but(state="cancelled", endedAt=start.endedAt or self._clock())
        self._tell_ended(closed)
        self._drop_blobs(start)
        write_start(self._store, closed)

    def _tell_ended(self, ended: PendingStart) -> None:
        """Hand a start that ends without a run to `on_ended` (its webhook), before the webhook
        URL's blob goes with the others; the record is written whatever that does."""
        if self._on_ended is None:
            return
        try:
            self._on_ended(ended)
        except Exception:  # the record must still say FAILED or CANCELLED
            log.exception("start of %s: its %s webhook could not be queued", ended.workflowId, ended.state)

    def _drop_blobs(self, start: PendingStart) -> None:
        for uri in start.blobs:
            try:
                self._store.delete(uri)
            except BlobStoreError:
                pass

    # ------------------------------------------------------------------ sweeping

    def _beat(self, due_only: bool = False) -> None:
        """Write the heartbeat; `due_only`: unless one was written a third of the takeover time ago.
        Only a gateway that ever had starts to launch, or claimed (`present`), beats: the others
        own no record and no claim."""
        now = self._clock()
        fresh = self._beaten_at is not None and now - self._beaten_at < self._settings.start_takeover_seconds / 3
        if due_only and fresh:
            return
        payload = json.dumps({"at": now}).encode()
        self._store.put_path(start_heartbeat_path(self.gateway_id), payload, "application/json")
        self._beaten_at = now

    def _beat_loop(self) -> None:
        """The heartbeat on a thread of its own: a sweep can be long (the first one after a restart
        reads every retained record), and a claimant's claims are taken over once its heartbeat is
        START_TAKEOVER_SECONDS old, launch or no launch (gateway/workflows/idempotency.py)."""
        interval = max(0.05, self._settings.start_takeover_seconds / 3)
        while not self._stop.wait(interval):
            if self._beaten_at is None:
                continue
            try:
                self._beat()
            except Exception:
                log.exception("heartbeat of the start launcher")

    def _sweep_loop(self) -> None:
        interval = max(0.05, self._settings.start_takeover_seconds / 3)
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:
                log.exception("sweep of pending starts")
            self._stop.wait(interval)

    def _alive(self, gateway_id: str, seen: dict[str, bool]) -> bool:
        if gateway_id not in seen:
            try:
                beat = json.loads(self._store.get_path(start_heartbeat_path(gateway_id)))
                seen[gateway_id] = self._clock() - float(beat["at"]) < self._settings.start_takeover_seconds
            except (BlobNotFoundError, ValueError, KeyError, TypeError):
                seen[gateway_id] = False
            except BlobStoreError:
                seen[gateway_id] = True  # cannot tell: leave it
        return seen[gateway_id]

    def sweep(self) -> int:
        """Take over the pending starts of gateways that stopped beating, close their cancelled
        ones, remove ended records past retention; returns how many were taken over."""
        taken = 0
        alive: dict[str, bool] = {self.gateway_id: True}
        now = self._clock()
        retention = self._settings.retention_days * 86400.0
        for blob in list(self._store.list_prefix(PENDING_START_PREFIX)):
            workflow_id = pending_start_id(blob.path)
            if workflow_id in self._mine or now - blob.modified.timestamp() < self._settings.start_takeover_seconds:
                continue  # in this gateway's queue; or too young to be abandoned or due for removal
            if workflow_id in self._ended and (retention <= 0 or now - blob.modified.timestamp() < retention):
                continue  # ended, and not due for removal: not read again
            try:
                start = read_start(self._store, workflow_id)
            except BlobStoreError:  # a name that is no workflow id: not ours
                continue
            if start is None:
                continue
            abandoned = start.gateway == self.gateway_id or not self._alive(start.gateway, alive)
            if start.state == "cancelled" and start.endedAt is None and abandoned:
                if start.launch_under_way and start.gateway != self.gateway_id:
                    # Its gateway died launching it: the run may exist. Taken over, the launcher
                    # looks for it (and stops it) before the record closes.
                    taken += int(self._take_over(start))
                    continue
                self._close_cancelled(start)  # its gateway never saw the cancel
                start.endedAt = now
            if start.state != "pending":
                if retention > 0 and now - (start.endedAt or now) > retention:
                    forget_start(self._store, workflow_id)
                    self._ended.discard(workflow_id)
                elif start.endedAt is not None and len(self._ended) < 100_000:
                    self._ended.add(workflow_id)
                continue
            if abandoned and start.gateway != self.gateway_id and self._take_over(start):
                taken += 1
        return taken

    def _take_over(self, start: PendingStart) -> bool:
        dead = start.gateway
        workflow_id = start.workflowId

        def settled(held: dict[str, Any]) -> bool:
            current = read_start(self._store, workflow_id)
            return current is None or not _takeable(current) or current.gateway != dead

        try:
            held = claim(
                self._store,
                start_takeover_claim(workflow_id, dead),
                {"gateway": self.gateway_id},
                stale_after=2 * self._settings.start_takeover_seconds,
                settled=settled,
            )
        except (BlobStoreError, ClaimError):
            return False
        if not held.won:
            return False
        current = read_start(self._store, workflow_id)
        if current is None or not _takeable(current) or current.gateway != dead:
            return False
        # attempts >= 1: the dead gateway may have launched it; the launcher looks for its run
        # first. (`cancelled` is read from the cancel blob, which stays: the record stays pending.)
        changes = {"gateway": self.gateway_id, "attempts": max(1, current.attempts), "state": "pending"}
        mine = PendingStart(**{**asdict(current), **changes})
        write_start(self._store, mine)
        log.warning("took over the pending start of %s from gateway %s", workflow_id, dead)
        self.submit(workflow_id)
        return True


def _takeable(start: PendingStart) -> bool:
    """A record another gateway may take over: pending, or cancelled while its launch was under way."""
    return start.state == "pending" or (start.state == "cancelled" and start.launch_under_way)
