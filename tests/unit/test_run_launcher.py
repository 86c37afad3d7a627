"""Canary for jewel_dagster/runtime/instance_plugins/run_launcher.py: how its health check answers,
without a code server.

The path where a live code server answers "no worker for this run" is tested end to end in
tests/e2e/test_process_faults.py (a killed code server's run fails and is retried).
"""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock, create_autospec

import dagster as dg
import pytest

from devtools.stack import free_port
from jewel_dagster.runtime.instance_plugins.run_launcher import (
    DagsterGrpcClient,
    DagsterUserCodeUnreachableError,
    ExecuteExternalJobArgs,
    GrpcServerCodeLocation,
    LaunchRunContext,
)

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


# A launch through a code server (no server here: the gRPC client's one call is stubbed).


class _StubbedStartRun:
    """What a code server's StartRun gets: the method and the serialized run arguments."""

    def __init__(self, fails: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fails = fails

    def __call__(self, method: str, request_type: Any, **kwargs: Any) -> Any:
        self.calls.append((method, kwargs["serialized_execute_run_args"]))
        if self.fails:
            raise DagsterUserCodeUnreachableError("no code server here")
        # A StartRunResult as the code server serializes it (the class is private; its form is not).
        result = {"__class__": "StartRunResult", "success": True, "message": None, "serializable_error_info": None}
        return SimpleNamespace(serialized_start_run_result=json.dumps(result))


def _code_server_client(monkeypatch: pytest.MonkeyPatch, query: _StubbedStartRun) -> DagsterGrpcClient:
    client = DagsterGrpcClient(port=free_port(), host="127.0.0.1")
    monkeypatch.setattr(client, "_query", query)
    return client


def _launchable(instance: dg.DagsterInstance, client: DagsterGrpcClient) -> LaunchRunContext:
    # A launched run's origin as Dagster stores it (the classes are private, their stored form is not).
    location = {"__class__": "GrpcServerRepositoryLocationOrigin", "host": "127.0.0.1", "port": client.port}
    location |= {"socket": None, "location_name": "here", "use_ssl": None, "additional_metadata": None}
    repository = {"__class__": "ExternalRepositoryOrigin", "repository_location_origin": location}
    repository["repository_name"] = "__repository__"
    stored = {"__class__": "ExternalPipelineOrigin", "external_repository_origin": repository}
    origin = dg.deserialize_value(json.dumps({**stored, "pipeline_name": "jewelry_generation"}))
    run = instance.add_run(
        dg.DagsterRun(job_name="jewelry_generation", run_id=str(uuid.uuid4()), remote_job_origin=origin)
    )
    location = create_autospec(GrpcServerCodeLocation, instance=True)
    location.client = client
    workspace = Mock()
    workspace.get_code_location.return_value = location
    return LaunchRunContext(dagster_run=run, workspace=workspace)


def _counting_instances_opened(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    opened: list[object] = []
    stock = dg.DagsterInstance.from_ref

    def counted(ref: Any) -> dg.DagsterInstance:
        opened.append(ref)
        return stock(ref)

    monkeypatch.setattr(dg.DagsterInstance, "from_ref", staticmethod(counted))
    return opened


def test_a_launch_sends_dagsters_start_run_and_opens_no_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dagster's client opens an instance from the ref for every StartRun, on the queue daemon's
    path from RUN_STARTING to the run worker's fork (issue 28): ours sends the same request."""
    query = _StubbedStartRun()
    with dg.instance_for_test(overrides={"run_launcher": LAUNCHER}) as instance:
        context = _launchable(instance, _code_server_client(monkeypatch, query))
        opened = _counting_instances_opened(monkeypatch)
        instance.run_launcher.launch_run(context)
        assert opened == []
        ((method, serialized),) = query.calls
        assert method == "StartRun"
        args = dg.deserialize_value(serialized, ExecuteExternalJobArgs)
        assert args.run_id == context.dagster_run.run_id
        assert args.job_origin == context.dagster_run.remote_job_origin
        assert args.instance_ref == instance.get_ref()
        tags = instance.get_run_by_id(context.dagster_run.run_id).tags  # type: ignore[union-attr]
        assert json.loads(tags[GRPC_INFO_TAG])["port"] == context.workspace.get_code_location("here").client.port  # type: ignore[union-attr]
        # Canary: Dagster's `join()` waits for the runs in this set (private); ours must add to it.
        assert context.dagster_run.run_id in instance.run_launcher._run_ids  # type: ignore[attr-defined]
        # No worker executes the stubbed start: ended here, or closing the instance joins it for 30 s.
        instance.report_run_canceled(context.dagster_run)


def test_a_failed_start_run_is_reported_on_the_run_as_dagster_does(monkeypatch: pytest.MonkeyPatch) -> None:
    query = _StubbedStartRun(fails=True)
    with dg.instance_for_test(overrides={"run_launcher": LAUNCHER}) as instance:
        context = _launchable(instance, _code_server_client(monkeypatch, query))
        with pytest.raises(DagsterUserCodeUnreachableError):
            instance.run_launcher.launch_run(context)
        messages = [event.message for event in instance.all_logs(context.dagster_run.run_id)]
        assert "Unexpected error in IPC client" in messages


def test_canary_dagsters_client_opens_an_instance_for_each_start_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """When this fails, Dagster's StartRun no longer opens an instance: drop `LaunchingClient`."""
    query = _StubbedStartRun()
    with dg.instance_for_test() as instance:
        context = _launchable(instance, _code_server_client(monkeypatch, query))
        opened = _counting_instances_opened(monkeypatch)
        dg.DefaultRunLauncher.launch_run_from_grpc_client(
            instance,
            context.dagster_run,
            context.workspace.get_code_location("here").client,  # type: ignore[union-attr]
        )
        assert len(opened) == 1
        assert [method for method, _ in query.calls] == ["StartRun"]
