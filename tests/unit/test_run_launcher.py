"""Canary for jewel_dagster/runtime/instance_plugins/run_launcher.py: how its health check answers,
without a code server.

The path where a live code server answers "no worker for this run" is tested end to end in
tests/e2e/test_process_faults.py (a killed code server's run fails and is retried).
"""

from __future__ import annotations

import json
import uuid

import dagster as dg
import pytest

from devtools.stack import free_port
from jewel_dagster.runtime.instance_plugins.run_launcher import LaunchRunContext

LAUNCHER = {"module": "jewel_dagster.runtime.instance_plugins.run_launcher", "class": "WorkerCheckingRunLauncher"}
GRPC_INFO_TAG = ".dagster/grpc_info"  # where DefaultRunLauncher records the code server of a run


def _started_run(instance: dg.DagsterInstance, tags: dict[str, str]) -> dg.DagsterRun:
    run = dg.DagsterRun(job_name="jewelry_generation", run_id=str(uuid.uuid4()), tags=tags)
    instance.add_run(run)
    instance.handle_run_event(run.run_id, dg.DagsterEvent("PIPELINE_START", "jewelry_generation"))
    return run


def test_the_health_check_waits_while_the_code_server_is_unreachable() -> None:
    with dg.instance_for_test(overrides={"run_launcher": LAUNCHER}) as instance:
        launcher = instance.run_launcher
        assert launcher.supports_check_run_worker_health
        nowhere = json.dumps({"host": "127.0.0.1", "port": free_port()})
        result = launcher.check_run_worker_health(_started_run(instance, {GRPC_INFO_TAG: nowhere}))
        # Not proof of death: a restart takes seconds, and max_runtime still bounds the run.
        assert result.status.value == "RUNNING"
        assert result.msg is not None and "unreachable" in result.msg


def test_a_run_without_a_code_server_address_is_left_to_max_runtime() -> None:
    with dg.instance_for_test(overrides={"run_launcher": LAUNCHER}) as instance:
        result = instance.run_launcher.check_run_worker_health(_started_run(instance, {}))
        assert result.status.value == "RUNNING"


def _overwritten_cancel(instance: dg.DagsterInstance) -> dg.DagsterRun:
    """A queued run cancelled while the queue daemon took it: the cancel's events are in the log,
    but the daemon's STARTING, written after them, is its status (jewel_dagster/runtime/
    instance_plugins/queued_cancels.py)."""
    run = instance.add_run(dg.DagsterRun(job_name="jewelry_generation", run_id=str(uuid.uuid4())))
    instance.report_run_canceling(run)
    instance.report_run_canceled(run)
    instance.report_dagster_event(dg.DagsterEvent("PIPELINE_STARTING", "jewelry_generation"), run_id=run.run_id)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTING  # type: ignore[union-attr]
    return dg.DagsterRun(job_name=run.job_name, run_id=run.run_id, status=dg.DagsterRunStatus.STARTING)


def test_a_run_cancelled_as_it_left_the_queue_is_not_launched_and_stays_cancelled() -> None:
    """Without the check the launch goes on (here it raises: no workspace to launch in) and the
    run executes after its cancel was answered CANCELLED."""
    with dg.instance_for_test(overrides={"run_launcher": LAUNCHER}) as instance:
        run = _overwritten_cancel(instance)
        instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED  # type: ignore[union-attr]


def test_a_run_never_cancelled_goes_on_to_dagsters_launch() -> None:
    with dg.instance_for_test(overrides={"run_launcher": LAUNCHER}) as instance:
        run = instance.add_run(dg.DagsterRun(job_name="jewelry_generation", run_id=str(uuid.uuid4())))
        with pytest.raises(dg.DagsterInvariantViolationError, match="requires a workspace"):
            instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
