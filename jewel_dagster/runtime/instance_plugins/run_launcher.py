"""Dagster's DefaultRunLauncher, plus a run-worker health check, so run monitoring ends runs whose
code server died.

Our run workers are children of the code server (jewel_dagster/runtime/processes/warm_code_server.py). When
the code server's process group is killed (OOM, a node restart, `docker compose restart
code-server`), its workers die with it and nothing reports their runs: the stock
DefaultRunLauncher has no health check, so run monitoring leaves such a run STARTED until
`max_runtime_seconds` (2 hours), its `gpu` pool slot and its queue place held all that time.

This launcher asks the code server named in the run's tags whether it still executes the run
(the gRPC `CanCancelExecution` call, which answers from the server's table of live run workers).
A code server that answers "no" for a STARTED run has lost its worker: the run is reported FAILED
at the next monitoring poll (`run_monitoring.poll_interval_seconds`), `run_retries` launches it
again, and `free_slots_after_run_end_seconds` gives its pool slots back. A code server that cannot
be reached is not taken as proof of death (a restart takes seconds; the workers may live on when
only the server's main process died): the run is checked again at the next poll, and
`max_runtime_seconds` still bounds it. Measured bounds: README, "Deployment".

A launch opens no instance of its own (issue 28): Dagster's gRPC client opens a whole instance
from its ref in `start_run` (three storages, each with its engine and schema check: ~6 ms here, on
the queue daemon's path between RUN_STARTING and the code server's fork) only to report an IPC
failure should the call fail. The launcher hands Dagster's launch a client whose `start_run` sends
the same request and reports that failure on the launcher's own instance (the same storage: the
ref is the instance's).

dagster.yaml and dagster.postgres.yaml name this class as `run_launcher`.

Private symbols used (checked against dagster 1.13.27):
- `dagster._core.launcher.base.CheckRunHealthResult`, `WorkerStatus`: what a health check answers,
  and `LaunchRunContext`, what `launch_run` is given (exported only from the private module).
- `DefaultRunLauncher._get_grpc_client_for_termination(run_id)`: the `DagsterGrpcClient` for the
  code server in the run's `dagster/grpc_info` tag (None for a finished run or one without it).
- `dagster._grpc.client.DagsterGrpcClient.can_cancel_execution(request, timeout)`: serialized
  `CanCancelExecutionResult` (`can_cancel`: the run is in the server's executions and not being
  terminated).
- `dagster._grpc.types.CanCancelExecutionRequest`, `CanCancelExecutionResult`.
- `dagster._core.errors.DagsterUserCodeUnreachableError`: what the client raises when no server answers.
- `DefaultRunLauncher.launch_run`'s body (the code location of the run's origin, which must be a
  `dagster._core.remote_representation.code_location.GrpcServerCodeLocation`, and its `client`),
  and the static `DefaultRunLauncher.launch_run_from_grpc_client(instance, run, client)`, which
  reads the client's `host`, `port`, `socket`, `use_ssl` and calls its `start_run`.
- `dagster._grpc.client.DagsterGrpcClient._query(method, request_type, **kwargs)` and
  `dagster._grpc.__generated__.dagster_api_pb2.StartRunRequest`: what its `start_run` sends
  (`serialized_execute_run_args`), answered by `serialized_start_run_result`.
- `dagster._core.events.EngineEventData.engine_error` and
  `dagster._utils.error.serializable_error_info_from_exc_info`, for the engine event of a failure.
- (`deserialize_value` is public now: `dg.deserialize_value`.)
Canaries: tests/unit/test_run_launcher.py (the answers for an unreachable server and a server
that does not know the run; a run cancelled as it left the queue is not launched; a launch sends
Dagster's StartRun request and opens no instance, where Dagster's client opens one) and
tests/e2e/test_process_faults.py (a killed code server's run fails and is retried).
"""

from __future__ import annotations

import sys
from typing import Any

import dagster as dg
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.events import EngineEventData
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.remote_representation.code_location import GrpcServerCodeLocation
from dagster._grpc.__generated__ import dagster_api_pb2
from dagster._grpc.client import DagsterGrpcClient
from dagster._grpc.types import CanCancelExecutionRequest, CanCancelExecutionResult, ExecuteExternalJobArgs
from dagster._utils.error import serializable_error_info_from_exc_info

from jewel_dagster.runtime.instance_plugins.queued_cancels import cancelled_before_launch

# One health check must not hold up the monitoring loop (it checks every STARTED run in turn).
HEALTH_CHECK_TIMEOUT_SECONDS = 5


class WorkerCheckingRunLauncher(dg.DefaultRunLauncher):
    """DefaultRunLauncher whose runs run monitoring can see die with their code server, and
    that launches no run cancelled while it left the queue (queued_cancels.py)."""

    def launch_run(self, context: LaunchRunContext) -> None:
        if cancelled_before_launch(self._instance, context.dagster_run):
            return
        run = context.dagster_run
        origin = run.remote_job_origin
        if context.workspace is None or origin is None:
            super().launch_run(context)  # Dagster's own error for a launch it cannot make
            return
        location = context.workspace.get_code_location(origin.repository_origin.code_location_origin.location_name)
        if not isinstance(location, GrpcServerCodeLocation):
            super().launch_run(context)
            return
        # Dagster's launch (the run's code server tag, StartRun, its answer), through our client.
        dg.DefaultRunLauncher.launch_run_from_grpc_client(
            self._instance,
            run,
            LaunchingClient(location.client, self._instance),  # type: ignore[arg-type]
        )
        self._run_ids.add(run.run_id)  # as Dagster's launch_run: what `join()` waits for

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        client = self._get_grpc_client_for_termination(run.run_id)
        if client is None:
            # Finished meanwhile, or launched without a code server address: nothing to ask.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no code server to ask; left to max_runtime")
        try:
            answer = client.can_cancel_execution(
                CanCancelExecutionRequest(run_id=run.run_id), timeout=HEALTH_CHECK_TIMEOUT_SECONDS
            )
        except DagsterUserCodeUnreachableError:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"code server {client.host}:{client.port} unreachable; checked again next poll"
            )
        if dg.deserialize_value(answer, CanCancelExecutionResult).can_cancel:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"the code server at {client.host}:{client.port} has no worker for this run "
            "(it restarted, or the worker died unnoticed)",
        )


class LaunchingClient:
    """A code server's gRPC client whose `start_run` opens no instance: Dagster's opens one from
    the run's instance ref for every launch, only to report a failed call on it. This one reports
    that failure ("Unexpected error in IPC client", as Dagster does) on `instance`, the one the
    ref was made from. Everything else is the wrapped client's."""

    def __init__(self, client: DagsterGrpcClient, instance: dg.DagsterInstance) -> None:
        self._client = client
        self._instance = instance

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def start_run(self, execute_run_args: ExecuteExternalJobArgs) -> str:
        try:
            reply = self._client._query(
                "StartRun",
                dagster_api_pb2.StartRunRequest,
                serialized_execute_run_args=dg.serialize_value(execute_run_args),
            )
        except Exception:
            self._instance.report_engine_event(
                message="Unexpected error in IPC client",
                dagster_run=self._instance.get_run_by_id(execute_run_args.run_id),
                engine_event_data=EngineEventData.engine_error(serializable_error_info_from_exc_info(sys.exc_info())),
            )
            raise
        return reply.serialized_start_run_result
