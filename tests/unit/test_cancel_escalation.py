"""A cancelled run worker that does not stop is killed and its run reported CANCELED (issue 14):
through the real path, the timer `WarmApiServer.CancelExecution` arms, with a worker stuck in a
C call that the cancel's interrupt cannot stop."""

from __future__ import annotations

import inspect
import multiprocessing
import os
import signal
import threading
import time
from types import SimpleNamespace
from typing import Any

import dagster as dg
import pytest

from jewel_dagster.resources.local_services import hold_a_core_in_c
from jewel_dagster.runtime.processes import warm_code_server
from jewel_dagster.runtime.processes.warm_code_server import (
    CancelExecutionRequest,
    WarmApiServer,
    end_cancelled_worker,
    end_orphaned_cancels,
)

DagsterApiServer = warm_code_server.dagster_grpc_server.DagsterApiServer


def test_canary_the_private_dagster_api_we_extend_is_still_there() -> None:
    # Checked against dagster 1.13.27: if one of these moves, cancels stop being escalated.
    source = inspect.getsource(DagsterApiServer)
    assert "def CancelExecution(" in source and "serialized_cancel_execution_request" in source
    assert "self._executions[run_id] = (" in source and "self._execution_lock" in source
    assert "self._termination_events[" in source and "self._termination_times[" in source
    assert "run_id" in CancelExecutionRequest._fields
    assert WarmApiServer.CancelExecution is not DagsterApiServer.CancelExecution
    assert 1 <= warm_code_server.CANCEL_GRACE_SECONDS <= 10
    # The check of ended workers we run first: still called by the server's loop, still failing
    # an unfinished run whose worker is gone (what a CANCELING one must not get).
    orphans = inspect.getsource(DagsterApiServer._check_for_orphaned_runs)
    assert "self._executions.items()" in orphans and "report_run_failed(run)" in orphans
    assert "self._check_for_orphaned_runs()" in source
    assert WarmApiServer._check_for_orphaned_runs is not DagsterApiServer._check_for_orphaned_runs


def _run_worker_stuck_in_c(cancelled: Any, started: Any) -> None:
    """A run worker whose step is inside one long numpy call. A thread turns the cancel into a
    SIGINT to the process, as Dagster's run worker does with its termination event."""

    def interrupt_when_cancelled() -> None:
        cancelled.wait()
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_cancelled, daemon=True).start()
    started.set()
    hold_a_core_in_c(120)


def _code_server_running(run_id: str, worker: Any, cancelled: Any, instance: dg.DagsterInstance) -> WarmApiServer:
    """Our code server's cancel path without a gRPC server: the table of executions Dagster's
    own `CancelExecution` reads (the canary above checks these names)."""
    server = WarmApiServer.__new__(WarmApiServer)
    server._execution_lock = threading.Lock()
    server._executions = {run_id: (worker, instance.get_ref())}
    server._termination_events = {run_id: cancelled}
    server._termination_times = {}
    return server


# The grace this test gives the stuck worker (production's 5 s, CANCEL_GRACE_SECONDS, is read by
# the same timer at each cancel): the worker holds a core in C through it, and 2.5 s of that core
# proves what 5 s did.
GRACE_OF_THE_TEST = 2.5


def test_a_worker_stuck_in_c_outlives_the_interrupt_and_the_cancel_kills_it_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(warm_code_server, "CANCEL_GRACE_SECONDS", GRACE_OF_THE_TEST)
    CANCEL_GRACE_SECONDS = GRACE_OF_THE_TEST  # noqa: N806 (the name the assertions below say)
    context = multiprocessing.get_context("spawn")
    cancelled, started = context.Event(), context.Event()
    worker = context.Process(target=_run_worker_stuck_in_c, args=(cancelled, started), daemon=True)
    worker.start()
    try:
        assert started.wait(60)
        with dg.instance_for_test() as instance:
            run = instance.create_run_for_job(dg.GraphDefinition("noop").to_job())
            instance.report_run_canceling(run)
            server = _code_server_running(run.run_id, worker, cancelled, instance)
            request = SimpleNamespace(
                serialized_cancel_execution_request=dg.serialize_value(CancelExecutionRequest(run_id=run.run_id))
            )
            server.CancelExecution(request, None)
            cancelled_at = time.monotonic()
            assert cancelled.is_set()  # Dagster's own cancel ran: the worker was interrupted
            # The interrupt waits for the C call to return: the worker is alive through the grace.
            worker.join(CANCEL_GRACE_SECONDS - 1)
            assert worker.is_alive(), "the worker stopped at the interrupt: nothing here needs the kill"
            # Then the timer armed by CancelExecution kills it (a few seconds of room on a loaded machine).
            # Polled: the server's timer thread kills and reaps the same Process object, and a join
            # here can return at that moment while is_alive() still reads the reaping (seen: "still
            # alive 5.2 s after the cancel", killed on time).
            deadline = cancelled_at + CANCEL_GRACE_SECONDS + 5
            while worker.is_alive() and time.monotonic() < deadline:
                worker.join(0.1)
            assert not worker.is_alive(), f"still alive {time.monotonic() - cancelled_at:.1f} s after the cancel"
            ended = time.monotonic() - cancelled_at
            assert ended >= CANCEL_GRACE_SECONDS - 0.5, ended
            after = instance.get_run_by_id(run.run_id)
            assert after is not None and after.status == dg.DagsterRunStatus.CANCELED
            messages = [e.message for e in instance.all_logs(run.run_id)]
            assert any(
                f"did not stop within {CANCEL_GRACE_SECONDS:.0f} s of the cancel and was killed" in m for m in messages
            ), messages
    finally:
        if worker.is_alive():
            worker.kill()
        worker.join(10)


def test_the_kill_reports_the_run_canceled() -> None:
    worker = multiprocessing.get_context("spawn").Process(target=hold_a_core_in_c, args=(120,), daemon=True)
    worker.start()
    try:
        with dg.instance_for_test() as instance:
            run = instance.create_run_for_job(dg.GraphDefinition("noop").to_job())
            instance.report_run_canceling(run)
            assert end_cancelled_worker(run.run_id, worker, instance.get_ref())
            assert not worker.is_alive()
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED  # type: ignore[union-attr]
    finally:
        if worker.is_alive():
            worker.kill()


def test_a_worker_that_stopped_by_itself_is_left_alone() -> None:
    worker = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    worker.start()
    worker.join()
    with dg.instance_for_test() as instance:
        assert not end_cancelled_worker("any", worker, instance.get_ref())


def test_a_canceling_run_whose_worker_exited_is_canceled_not_failed() -> None:
    """A cancel that reached a run while it was STARTING: its worker finds it CANCELING, ignores
    it as a duplicate and exits 0. Dagster's orphan check reported it FAILED (and run retries
    then completed the cancelled request, seen on CI); ours reports it CANCELED first. An
    unfinished run that is not being cancelled is still Dagster's to fail."""
    exited = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    exited.start()
    exited.join()
    with dg.instance_for_test() as instance:
        job = dg.GraphDefinition("noop").to_job()
        cancelled = instance.create_run_for_job(job)
        instance.report_run_canceling(cancelled)
        crashed = instance.create_run_for_job(job)
        instance.handle_run_event(
            crashed.run_id,
            dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=job.name),
        )
        server = WarmApiServer.__new__(WarmApiServer)
        server._execution_lock = threading.Lock()
        server._executions = {run.run_id: (exited, instance.get_ref()) for run in (cancelled, crashed)}
        server._termination_events = {run.run_id: threading.Event() for run in (cancelled, crashed)}
        server._termination_times = {}
        server._shutdown_once_executions_finish_event = threading.Event()
        server._check_for_orphaned_runs()
        assert instance.get_run_by_id(cancelled.run_id).status == dg.DagsterRunStatus.CANCELED  # type: ignore[union-attr]
        assert instance.get_run_by_id(crashed.run_id).status == dg.DagsterRunStatus.FAILURE  # type: ignore[union-attr]
        messages = [e.message for e in instance.all_logs(cancelled.run_id)]
        assert any("ended while the run was being cancelled (exit code 0)" in m for m in messages), messages
        assert server._executions == {}
        assert end_orphaned_cancels({}, threading.Lock()) == []
