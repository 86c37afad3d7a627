"""The run queue dequeues when a run is submitted (jewel_dagster/runtime/processes/queue_daemon.py), and
its limits still hold: max concurrent runs, tag limits, priority order.

The daemon's loop runs in a thread here, on a test instance whose launcher only records runs, with
a 60 s poll interval: a run that starts within the test's deadline was started by a wake."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import dagster as dg

from jewel_dagster.defs.request_runs import BACKGROUND_TAG
from jewel_dagster.runtime.instance_plugins.queue_coordinator import PromptQueuedRunCoordinator
from jewel_dagster.runtime.instance_plugins.queue_wake import RUN_ENDED, wake, wake_address
from jewel_dagster.runtime.processes.queue_daemon import PromptRunQueueDaemon, _Waker

POLL_SECONDS = 60  # far beyond every deadline below: only a wake can explain a dequeue
DEADLINE_SECONDS = 20.0  # generous: the machine is shared and loaded


class LaunchNothing(dg.DefaultRunLauncher):
    """A launcher that starts no worker: a launched run stays STARTING (in progress)."""

    def launch_run(self, context: Any) -> None:
        pass


def _instance_overrides(max_runs: int) -> dict[str, Any]:
    return {
        "run_coordinator": {
            "module": "jewel_dagster.runtime.instance_plugins.queue_coordinator",
            "class": "PromptQueuedRunCoordinator",
            "config": {"dequeue_interval_seconds": POLL_SECONDS, "dequeue_use_threads": True},
        },
        "run_launcher": {"module": __name__, "class": "LaunchNothing"},
        "concurrency": {
            "runs": {
                "max_concurrent_runs": max_runs,
                "tag_concurrency_limits": [{"key": BACKGROUND_TAG, "value": "regeneration", "limit": 1}],
            }
        },
    }


def _wait_for(what: str, ready: Callable[[], bool]) -> float:
    started = time.monotonic()
    while not ready():
        assert time.monotonic() - started < DEADLINE_SECONDS, f"{what} did not happen"
        time.sleep(0.01)
    return time.monotonic() - started


@contextmanager
def _queue(max_runs: int) -> Iterator[tuple[dg.DagsterInstance, PromptRunQueueDaemon]]:
    with dg.instance_for_test(overrides=_instance_overrides(max_runs)) as instance:
        assert isinstance(instance.run_coordinator, PromptQueuedRunCoordinator)
        daemon = PromptRunQueueDaemon(POLL_SECONDS, wake_address(instance))
        context = SimpleNamespace(instance=instance, create_request_context=mock.Mock)
        stop = threading.Event()

        def loop() -> None:
            with daemon:
                steps = daemon.core_loop(context, stop)
                while not stop.is_set():
                    next(steps)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            _wait_for("the first look at the queue", lambda: daemon.iterations >= 1)
            yield instance, daemon
        finally:
            stop.set()
            thread.join(timeout=10)


def _origin(job_name: str) -> Any:
    """A launched run's code location origin, as Dagster stores it in the run (a queued run needs
    one; the classes are private, their stored form is not)."""
    location = {"__class__": "RegisteredRepositoryLocationOrigin", "location_name": "jewel_dagster.definitions"}
    repository = {
        "__class__": "ExternalRepositoryOrigin",
        "repository_location_origin": location,
        "repository_name": "__repository__",
    }
    stored = {
        "__class__": "ExternalPipelineOrigin",
        "external_repository_origin": repository,
        "pipeline_name": job_name,
    }
    return dg.deserialize_value(json.dumps(stored))


def _submit(instance: dg.DagsterInstance, name: str, tags: dict[str, str] | None = None) -> str:
    """A run submitted as a launch submits it: created NOT_STARTED, then the coordinator's
    `submit_run` (Dagster's enqueue, then our wake)."""
    run = instance.add_run(
        dg.DagsterRun(
            job_name=name,
            run_id=uuid.uuid4().hex,
            status=dg.DagsterRunStatus.NOT_STARTED,
            tags=tags or {},
            remote_job_origin=_origin(name),
        )
    )
    submitted = instance.run_coordinator.submit_run(dg.SubmitRunContext(run, workspace=mock.Mock()))
    assert submitted.status == dg.DagsterRunStatus.QUEUED
    return run.run_id


def _started(instance: dg.DagsterInstance) -> set[str]:
    runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING]))
    return {run.job_name for run in runs}


def _look_again(instance: dg.DagsterInstance, daemon: PromptRunQueueDaemon) -> None:
    """Wake the daemon; return once an iteration that began after the wake has ended."""
    begun = daemon.begun
    assert wake(instance)
    _wait_for("an iteration after the wake", lambda: daemon.iterations > begun)


def _finish(instance: dg.DagsterInstance, daemon: PromptRunQueueDaemon, run_id: str) -> None:
    """The run ends and the ending wakes the queue (our event log storage does this in a stack)."""
    run = instance.get_run_by_id(run_id)
    assert run is not None
    instance.report_run_failed(run)
    _look_again(instance, daemon)


def test_a_submitted_run_is_dequeued_by_the_wake_not_the_poll() -> None:
    with _queue(max_runs=4) as (instance, daemon):
        assert daemon.woken == 0
        _submit(instance, "shopper")
        waited = _wait_for("the run's launch", lambda: _started(instance) == {"shopper"})
        assert daemon.woken >= 1 and daemon.begun >= 2  # the second look at the queue, woken
        assert waited < POLL_SECONDS / 2


def test_the_limits_and_the_priorities_hold_on_the_prompt_path() -> None:
    regeneration = {BACKGROUND_TAG: "regeneration", "dagster/priority": "-10"}
    with _queue(max_runs=2) as (instance, daemon):
        first = _submit(instance, "first")
        second = _submit(instance, "second")
        _wait_for("both launches", lambda: _started(instance) == {"first", "second"})

        # The queue is full: what comes now waits, whatever wakes the daemon.
        woken = daemon.woken
        background_a = _submit(instance, "background-a", regeneration)
        _submit(instance, "background-b", regeneration)
        shopper_a = _submit(instance, "shopper-a")
        _submit(instance, "shopper-b")
        _look_again(instance, daemon)
        assert daemon.woken > woken
        assert _started(instance) == {"first", "second"}  # max_concurrent_runs

        # A freed place goes to the shoppers first (dagster/priority), oldest first.
        _finish(instance, daemon, first)
        assert _started(instance) == {"second", "shopper-a"}
        _finish(instance, daemon, second)
        assert _started(instance) == {"shopper-a", "shopper-b"}
        # Then one re-generation run at a time (tag_concurrency_limits), even with a place free.
        _finish(instance, daemon, shopper_a)
        assert _started(instance) == {"shopper-b", "background-a"}
        _finish(instance, daemon, background_a)
        assert _started(instance) == {"shopper-b", "background-b"}


def test_a_run_end_woken_before_the_runs_status_changed_is_looked_at_again_soon() -> None:
    """Dagster stores a run's end in the event log before it updates the run's status, and our
    storage wakes the queue from the first: the woken iteration can still count the run in
    flight. Without a second look the freed place waited for the poll (60 s here, 1 s deployed)."""
    with _queue(max_runs=1) as (instance, daemon):
        daemon.follow_up_seconds = 1.0  # room for a loaded machine between the wake and the status
        first = _submit(instance, "first")
        _wait_for("the first launch", lambda: _started(instance) == {"first"})
        _submit(instance, "second")
        _look_again(instance, daemon)
        assert _started(instance) == {"first"}  # the queue is full
        begun = daemon.begun
        assert wake(instance, RUN_ENDED)  # the end's wake, as the event is stored...
        _wait_for("the woken iteration", lambda: daemon.iterations > begun)
        assert _started(instance) == {"first"}  # ...which still saw the run in flight
        run = instance.get_run_by_id(first)
        assert run is not None
        instance.report_run_failed(run)  # ...then the run's status
        _wait_for("the second launch", lambda: _started(instance) == {"second"})


def test_a_wake_with_no_daemon_listening_is_harmless() -> None:
    with dg.instance_for_test(overrides=_instance_overrides(4)) as instance:
        assert wake(instance) is False
        run_id = _submit(instance, "queued")  # the submit itself never fails for want of a daemon
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.QUEUED


def test_a_run_end_stored_through_our_event_log_wakes_the_queue(tmp_path: Path) -> None:
    # The next queued run takes a freed place at once: the run worker that stores the run's end
    # (our event log storage, in every dagster.yaml) wakes the daemon.
    overrides = {
        "event_log_storage": {
            "module": "jewel_dagster.runtime.instance_plugins.pool_claims",
            "class": "QuickClaimSqliteEventLogStorage",
            "config": {"base_dir": str(tmp_path / "runs")},
        }
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        waker = _Waker(wake_address(instance))
        try:
            run = instance.add_run(dg.DagsterRun(job_name="ends", status=dg.DagsterRunStatus.STARTED))
            instance.report_engine_event("still running", run)
            assert not waker.wait(0.2)  # other events wake nothing
            instance.report_run_failed(run)
            assert waker.wait(DEADLINE_SECONDS)
        finally:
            waker.close()
