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
- (`deserialize_value` is public now: `dg.deserialize_value`.)
Canaries: tests/unit/test_run_launcher.py (the answers for an unreachable server and a server
that does not know the run; a run cancelled as it left the queue is not launched) and
tests/e2e/test_process_faults.py (a killed code server's run fails and is retried).
"""

from __future__ import annotations

import dagster as dg
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._grpc.types import CanCancelExecutionRequest, CanCancelExecutionResult

from jewel_dagster.runtime.instance_plugins.queued_cancels import cancelled_before_launch

# One health check must not hold up the monitoring loop (it checks every STARTED run in turn).
HEALTH_CHECK_TIMEOUT_SECONDS = 5


class WorkerCheckingRunLauncher(dg.DefaultRunLauncher):
    """DefaultRunLauncher whose runs run monitoring can see die with their code server, and
    that launches no run cancelled while it left the queue (queued_cancels.py)."""

    def launch_run(self, context: LaunchRunContext) -> None:
        if cancelled_before_launch(self._instance, context.dagster_run):
            return
        super().launch_run(context)

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
