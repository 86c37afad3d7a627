"""A cancelled run worker that does not stop is killed and its run reported CANCELED (issue 14)."""

from __future__ import annotations

import inspect
import multiprocessing
import signal
import time

import dagster as dg

from jewel_dagster.runtime import warm_code_server
from jewel_dagster.runtime.warm_code_server import CancelExecutionRequest, WarmApiServer, end_cancelled_worker

DagsterApiServer = warm_code_server.dagster_grpc_server.DagsterApiServer


def test_canary_the_private_dagster_api_we_extend_is_still_there() -> None:
    # Checked against dagster 1.13.27: if one of these moves, cancels stop being escalated.
    source = inspect.getsource(DagsterApiServer)
    assert "def CancelExecution(" in source and "serialized_cancel_execution_request" in source
    assert "self._executions[run_id] = (" in source and "self._execution_lock" in source
    assert "run_id" in CancelExecutionRequest._fields
    assert WarmApiServer.CancelExecution is not DagsterApiServer.CancelExecution
    assert 1 <= warm_code_server.CANCEL_GRACE_SECONDS <= 10


def _busy_ignoring_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # like a step inside a long C call
    while True:
        pass


def test_a_worker_that_ignores_the_cancel_is_killed_and_the_run_canceled() -> None:
    worker = multiprocessing.get_context("spawn").Process(target=_busy_ignoring_interrupts, daemon=True)
    worker.start()
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(dg.GraphDefinition("noop").to_job())
        instance.report_run_canceling(run)
        time.sleep(0.2)
        assert end_cancelled_worker(run.run_id, worker, instance.get_ref())
        assert not worker.is_alive()
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED  # type: ignore[union-attr]


def test_a_worker_that_stopped_by_itself_is_left_alone() -> None:
    worker = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    worker.start()
    worker.join()
    with dg.instance_for_test() as instance:
        assert not end_cancelled_worker("any", worker, instance.get_ref())
