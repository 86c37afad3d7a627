"""Dagster's run queue, dequeued when a run is submitted instead of at the next poll.

Why: the QueuedRunCoordinator's daemon looks at the queue every `dequeue_interval_seconds`
(whole seconds, and its loop sleeps in 0.5 s steps), so a run waited 0.5 s on average, up to
1 s, between its launch and its start even when capacity was free (README, "Performance").

How: the queue and its rules stay Dagster's. `PromptQueuedRunCoordinator` is the stock
coordinator that, once a run is QUEUED, sends a wake datagram to the daemon; the daemon's queue
loop (`PromptRunQueueDaemon`, the stock `QueuedRunCoordinatorDaemon` whose wait between
iterations also ends on a wake) then runs Dagster's own dequeue iteration at once: the same
`max_concurrent_runs`, `tag_concurrency_limits`, `dagster/priority` order and pool checks, from
the one process that dequeues, so no limit can be raced past. The ending of a run wakes it too
(`wake_on_run_end`, called by our event log storages), so a queued run takes a freed place at
once; as that wake is sent before Dagster updates the ended run's status, an iteration woken by
a run's end is followed by another RUN_END_FOLLOW_UP_SECONDS later. A lost or unsent wake costs
nothing but the poll: the interval loop stays as it was.

The wake (instance_plugins/queue_wake.py) reaches processes of one instance on one machine (the embedded
default); in docker-compose and scale-out, separate containers, the daemon dequeues at its poll,
as stock Dagster does.

The daemon's loop is Dagster's only when the daemon is started through this module:
`python -m jewel_dagster.runtime.processes.queue_daemon run -w workspace.yaml` (the arguments of
`dagster-daemon`), which makes Dagster's daemon factory build `PromptRunQueueDaemon` for the
coordinator dagster.yaml names (`instance_plugins/queue_coordinator.py`).
A plain `dagster-daemon run` still works, polling.

Private symbols used (checked against dagster 1.13.27), canaries in
tests/unit/test_runtime_canaries.py:
- `dagster._daemon.run_coordinator.queued_run_coordinator_daemon.QueuedRunCoordinatorDaemon`:
  `__init__(interval_seconds)`, `run_iteration(workspace_process_context)`, `interval_seconds`,
  `_logger`, and its `daemon_type()` "QUEUED_RUN_COORDINATOR".
- `dagster._daemon.daemon.SpanMarker` (START_SPAN / END_SPAN yielded around an iteration, as
  `IntervalDaemon.core_loop` does), `DaemonIterator` and `DagsterDaemon` (types).
- `dagster._daemon.controller.create_daemon_of_type(daemon_type, instance)`, looked up by name by
  `create_daemons_from_instance(instance)`.
- `dagster._daemon.cli.main`, the `dagster-daemon` command.
- `dagster._utils.error.serializable_error_info_from_exc_info`.
- `dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME` (5): the sensor loop's period, read at each
  pass of `execute_sensor_iteration_loop`; `set_sensor_loop_seconds` sets it from
  SENSOR_LOOP_SECONDS (production keeps Dagster's 5 s; the tests that wait for a sensor's tick,
  the run-trace and re-generation sensors, shorten it).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable
from threading import Event
from typing import Any

import dagster as dg
from dagster._daemon.daemon import DaemonIterator, DagsterDaemon, SpanMarker
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster._utils.error import serializable_error_info_from_exc_info

from jewel_dagster.runtime.instance_plugins.queue_coordinator import PromptQueuedRunCoordinator
from jewel_dagster.runtime.instance_plugins.queue_wake import RUN_ENDED, wake_address

# The longest the loop waits without yielding: the daemon controller writes its heartbeat and
# checks for shutdown between yields (Dagster's own loop waits 0.5 s at a time too).
_YIELD_EVERY_SECONDS = 0.5
# After an iteration woken by a run's end, the next one comes this soon: the end's wake is sent
# when the event is stored, before Dagster updates the run's status, so the woken iteration may
# still have counted the run in flight (and left its freed place to the next poll, 1 s).
RUN_END_FOLLOW_UP_SECONDS = 0.1


class _Waker:
    """The daemon's end of the wake socket: `wait` returns True when woken (draining every
    wake sent meanwhile: one iteration serves them all)."""

    def __init__(self, address: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(address)
        except OSError:
            self._sock.close()
            raise

    def wait(self, timeout: float) -> bytes:
        """What the wakes received within `timeout` said, all of them; b"" when none came."""
        if timeout <= 0:
            return b""
        self._sock.settimeout(timeout)
        try:
            said = self._sock.recv(16)
        except (TimeoutError, BlockingIOError):
            return b""
        self._sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                said += self._sock.recv(16)
        return said

    def close(self) -> None:
        self._sock.close()


class PromptRunQueueDaemon(QueuedRunCoordinatorDaemon):
    """Dagster's queue daemon whose wait between iterations ends early on a wake.

    `begun`, `iterations` (ended) and `woken` count what the loop did (the tests read them)."""

    def __init__(self, interval_seconds: float, address: str) -> None:
        super().__init__(interval_seconds)
        self.address = address
        self._waker: _Waker | None = None
        self.begun = 0
        self.iterations = 0
        self.woken = 0
        self.follow_up_seconds = RUN_END_FOLLOW_UP_SECONDS
        self._lock = threading.Lock()

    def _listen(self) -> _Waker | None:
        if self._waker is None:
            try:
                self._waker = _Waker(self.address)
            except OSError as exc:  # another daemon of this instance holds it: poll as Dagster does
                self._logger.warning("run queue wake-up unavailable (%s); dequeuing at the poll only", exc)
        return self._waker

    def __exit__(self, *exc_info: Any) -> None:
        if self._waker is not None:
            self._waker.close()
            self._waker = None
        super().__exit__(*exc_info)

    def core_loop(self, workspace_process_context: Any, shutdown_event: Event) -> DaemonIterator:
        waker = self._listen()  # bound before the first look at the queue: no submit is missed
        follow_up = False  # the iteration about to run was woken by a run's end: look again soon
        while True:
            with self._lock:
                self.begun += 1
            yield SpanMarker.START_SPAN
            try:
                yield from self.run_iteration(workspace_process_context)
            except Exception:
                error_info = serializable_error_info_from_exc_info(sys.exc_info())
                self._logger.error("Caught error:\n%s", error_info)
                yield error_info
            yield SpanMarker.END_SPAN
            with self._lock:
                self.iterations += 1
            wait = min(self.interval_seconds, self.follow_up_seconds) if follow_up else self.interval_seconds
            follow_up = False
            deadline = time.monotonic() + wait
            while not shutdown_event.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                step = min(left, _YIELD_EVERY_SECONDS)
                said = waker.wait(step) if waker is not None else b""
                if said:
                    with self._lock:
                        self.woken += 1
                    follow_up = RUN_ENDED in said
                    break
                if waker is None:
                    shutdown_event.wait(step)
                yield None
            yield None


def install() -> Callable[[], None]:
    """Make Dagster's daemon factory build `PromptRunQueueDaemon` for a `PromptQueuedRunCoordinator`
    (any other coordinator keeps Dagster's daemon); returns what undoes it (for tests)."""
    from dagster._daemon import controller

    stock = controller.create_daemon_of_type

    def undo() -> None:
        controller.create_daemon_of_type = stock

    if getattr(stock, "jewel_prompt_queue", False):
        return undo

    def create_daemon_of_type(daemon_type: str, instance: dg.DagsterInstance) -> DagsterDaemon[Any]:
        coordinator = instance.run_coordinator
        if daemon_type == QueuedRunCoordinatorDaemon.daemon_type() and isinstance(
            coordinator, PromptQueuedRunCoordinator
        ):
            return PromptRunQueueDaemon(coordinator.dequeue_interval_seconds, wake_address(instance))
        return stock(daemon_type, instance)

    create_daemon_of_type.jewel_prompt_queue = True  # type: ignore[attr-defined]
    controller.create_daemon_of_type = create_daemon_of_type
    return undo


def queue_daemon(instance: dg.DagsterInstance) -> QueuedRunCoordinatorDaemon:
    """The queue loop `dagster-daemon` builds for `instance`, through Dagster's own
    `create_daemons_from_instance` (the canary's view of what `install` changed)."""
    from dagster._daemon import controller

    (daemon,) = [
        d
        for d in controller.create_daemons_from_instance(instance)
        if d.daemon_type() == QueuedRunCoordinatorDaemon.daemon_type()
    ]
    assert isinstance(daemon, QueuedRunCoordinatorDaemon)
    return daemon


def set_sensor_loop_seconds(seconds: float) -> float:
    """Make the daemon's sensor loop look at the sensors every ``seconds`` (each sensor still
    ticks at most every `minimum_interval_seconds`); returns the period it had."""
    from dagster._daemon import sensor

    before: float = sensor.MIN_INTERVAL_LOOP_TIME
    sensor.MIN_INTERVAL_LOOP_TIME = seconds  # type: ignore[assignment]
    return before


def sensor_loop_reads_its_period() -> bool:
    """Whether Dagster's sensor loop looks its period up at each pass (a module global, not a
    value bound once): what `set_sensor_loop_seconds` relies on (the canary's question)."""
    from dagster._daemon import sensor

    return "MIN_INTERVAL_LOOP_TIME" in sensor.execute_sensor_iteration_loop.__code__.co_names


def main() -> None:
    """`dagster-daemon` with the prompt queue loop, and its sensor loop SENSOR_LOOP_SECONDS apart."""
    from dagster._daemon.cli import main as dagster_daemon

    from jewel_dagster.settings import get_settings

    install()
    set_sensor_loop_seconds(get_settings().sensor_loop_seconds)
    dagster_daemon()


if __name__ == "__main__":
    main()
