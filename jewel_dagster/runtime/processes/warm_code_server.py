"""Dagster's code server with warm run workers: `python -m jewel_dagster.runtime.processes.warm_code_server -p 4000`.

Stock Dagster starts every run worker with multiprocessing's *spawn*: a fresh interpreter that
imports Dagster, numpy, OpenCV and this code location before the first step runs, about 2 s of
CPU per request on these machines. Here the code server starts its run workers from a
*forkserver* that has imported all of that once, so a worker begins with the modules loaded.
Everything else is Dagster's own `dagster api grpc` (same options, same gRPC API, same run
worker entry point), so the UI, run monitoring, termination and retries work unchanged.

`CODE_SERVER=managed` (devtools.stack) keeps the stock path: the webserver and daemon then
spawn their own code servers from workspace.yaml.

A cancel also ends the work: Dagster's cancel only interrupts the run worker (SIGINT), and a
step's RetryPolicy turns that interrupt into a step retry (`op_execution_error_boundary`), while
code inside a long C call never sees it; the run then stayed CANCELING with the step burning a
core. So `CancelExecution` here also arms a timer: a worker still alive `CANCEL_GRACE_SECONDS`
later is killed and its run reported CANCELED (an engine event says why). And a run whose worker
exits while the run is CANCELING (a cancel that reached the run while it was STARTING: the worker
then ignores it as a duplicate and exits) is reported CANCELED, not FAILED and retried.

Private symbols used (checked against dagster 1.13.27):
- `dagster._grpc.server.DagsterApiServer`: subclassed; its `_mp_ctx` (a spawn context) replaced.
- `dagster._grpc.impl`: preloaded in the forkserver (the run worker's entry point); so are
  `dagster._core.storage.legacy_storage`, `dagster._core.execution.plan.active` and
  `dagster._core.executor.in_process`, which the worker imports when it opens the instance and
  runs the plan (a module that moved is skipped by the forkserver: the canary test imports each).
- `DagsterApiServer.__init__`'s keyword `loadable_target_origin` (its `module_name`: the code
  location, for the forkserver's warm-up, processes/worker_warmup.py), as `grpc_command` passes it.
- `DagsterApiServer.CancelExecution(request, context)`: extended (super() first); the request is
  a `CancelExecutionRequest` serialized in `request.serialized_cancel_execution_request`.
- `DagsterApiServer._executions` (run id -> (process, instance ref)) under `_execution_lock`.
- `DagsterApiServer._check_for_orphaned_runs()`: extended (ours first, then super()): a CANCELING
  run whose worker exited is reported CANCELED before Dagster's check would report it FAILED.
- `dagster._grpc.types.CancelExecutionRequest` (read with the public `dg.deserialize_value`).
- `dagster._cli.api.grpc_command`: imports `DagsterApiServer` from `dagster._grpc.server` when
  called, so replacing the module attribute hands it ours. If that import moves, the server
  still works but spawns its workers: the canary test sees a worker that was not forked.
Canary: tests/e2e/test_warm_code_server.py (the run worker's parent, from /proc, is the forkserver).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from typing import Any

import dagster._grpc.server as dagster_grpc_server  # the class `dagster api grpc` instantiates
from dagster import DagsterInstance, DagsterRunStatus, deserialize_value
from dagster._grpc.types import CancelExecutionRequest

from jewel_dagster.runtime.processes.forked_forkserver import start_forked_forkserver

# The code location's module (`-m`), in the environment the forkserver inherits: its warm-up
# (processes/worker_warmup.py) builds that module's repository before any run worker is forked.
CODE_LOCATION_ENV = "JEWEL_WARM_CODE_LOCATION"

# `spawn`: the forkserver is multiprocessing's own, a fresh interpreter started at the first run
# (benchmarks.forkserver_start's baseline); anything else forks it from the code server at start.
FORKSERVER_START_ENV = "FORKSERVER_START"

# A run worker gets this long to stop by itself after a cancel (Dagster's interrupt, its events
# written), then it is killed.
CANCEL_GRACE_SECONDS = 5.0

# The preload that builds the repository and opens the instance (processes/worker_warmup.py).
WARMUP_MODULE = "jewel_dagster.runtime.processes.worker_warmup"

# Imported once in the forkserver; every run worker forked from it starts with them loaded.
PRELOAD = [
    "dagster",
    "dagster._grpc.impl",
    "jewel_dagster.definitions",
    # The repository, its jobs and their run config schemas, a first instance and the model
    # services' HTTP client set-up, which each worker built before its first model call (issue 28).
    WARMUP_MODULE,
    "jewel_dagster.runtime.instance_plugins.compute_logs",
    # Step stdout/stderr mirrored by GNU tail alone, without Dagster's Python watcher per stream
    # (two interpreters started at each run's first step; installed on import).
    "jewel_dagster.runtime.loggers.compute_log_tail",
    # What each run worker still imported after the fork, for the instance it opens (py-spy of
    # the run workers, instant backends: ~4 % of their samples in imports, 119 modules under
    # legacy_storage alone): the storages and our pool-claim storages.
    "dagster._core.storage.legacy_storage",
    "jewel_dagster.runtime.instance_plugins.pool_claims",
    "dagster._core.execution.plan.active",
    "dagster._core.executor.in_process",
    # What a run worker still imported on its way to the first model call (py-spy of the run
    # workers, instant backends; issue 28): the job's reconstruction and execution plan ...
    "dagster._utils.test.definitions",
    "dagster._core.system_config.composite_descent",
    "dagster._core.utility_ops",
    # ... and Pillow's codecs, which `Image.open` imports at a process's first call
    # (`Image.preinit`): about half of the photo's decode in prepare_canvas, before the resize call.
    "PIL.BmpImagePlugin",
    "PIL.GifImagePlugin",
    "PIL.JpegImagePlugin",
    "PIL.PngImagePlugin",
    "PIL.PpmImagePlugin",
    # Gemini's SDK, which the code location imports only when a generation runs (its import costs
    # ~0.3 s of CPU): imported in the run worker, it held the GIL at the start of generate_images,
    # beside the thread sending Flux its request (issue 28, target 2).
    "google.genai",
    "google.genai.errors",
    "google.genai.types",
    "google.auth.aio.credentials",  # what the SDK's client imports when it is made
]


class WarmApiServer(dagster_grpc_server.DagsterApiServer):
    """DagsterApiServer whose run workers come from a preloaded forkserver instead of spawn."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        origin = kwargs.get("loadable_target_origin")
        if origin is not None and origin.module_name:
            # worker_warmup builds this module's repository in the forkserver (which inherits it).
            os.environ[CODE_LOCATION_ENV] = origin.module_name
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        # Before Dagster's server starts its threads: the forkserver as a fork of this process
        # (processes/forked_forkserver.py); with threads already running, multiprocessing spawns
        # one at the first run instead.
        if os.environ.get(FORKSERVER_START_ENV, "fork") != "spawn":
            code_location = [origin.module_name] if origin is not None and origin.module_name else []
            # The warm-up opens the instance (DAGSTER_HOME): here, before Dagster's server opens
            # it, never beside it: on a fresh PostgreSQL database two processes creating the
            # schema at once collide ("type secondary_indexes already exists": the CI soak's
            # code server died of it when the forkserver warmed up after the fork).
            start_forked_forkserver(PRELOAD, imported_first=["dagster", *code_location, WARMUP_MODULE])
        super().__init__(*args, **kwargs)
        self._mp_ctx = context  # type: ignore[assignment]  # Dagster declares a SpawnContext

    def CancelExecution(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        reply = super().CancelExecution(request, context)
        try:
            run_id = deserialize_value(request.serialized_cancel_execution_request, CancelExecutionRequest).run_id
        except Exception:  # noqa: BLE001 - super() already answered for a malformed request
            return reply
        with self._execution_lock:
            execution = self._executions.get(run_id)
        if execution is not None:
            process, instance_ref = execution
            timer = threading.Timer(
                CANCEL_GRACE_SECONDS, end_cancelled_worker, (run_id, process, instance_ref, self._execution_lock)
            )
            timer.daemon = True
            timer.start()
        return reply

    def _check_for_orphaned_runs(self) -> None:
        """Dagster's check of ended workers, a cancelled run's first: see `end_orphaned_cancels`."""
        end_orphaned_cancels(self._executions, self._execution_lock)
        super()._check_for_orphaned_runs()


def end_orphaned_cancels(executions: dict[str, Any], executions_lock: threading.Lock) -> list[str]:
    """Report CANCELED the CANCELING runs whose worker has exited; returns their run ids.

    Dagster's own check (`_check_for_orphaned_runs`, right after this) reports FAILED every
    unfinished run whose worker exited, and run retries then launch it again. A run cancelled
    while STARTING reaches its worker as CANCELING; the worker ignores it ("a duplicate run")
    and exits 0, so the cancelled request was FAILED, retried and COMPLETED (seen on CI: the API
    had answered the cancel 409 FAILED). A worker gone while its run is being cancelled is the
    cancel done: CANCELED, with an engine event saying so.
    """
    ended = []
    with executions_lock:
        for run_id, (process, instance_ref) in list(executions.items()):
            if process.is_alive():
                continue
            with DagsterInstance.from_ref(instance_ref) as instance:
                run = instance.get_run_by_id(run_id)
                if run is None or run.status != DagsterRunStatus.CANCELING:
                    continue
                instance.report_engine_event(
                    f"The run worker (pid {process.pid}) ended while the run was being cancelled "
                    f"(exit code {process.exitcode}).",
                    run,
                )
                instance.report_run_canceled(run)
                ended.append(run_id)
    return ended


def end_cancelled_worker(
    run_id: str, process: Any, instance_ref: Any, executions_lock: threading.Lock | None = None
) -> bool:
    """Kill a run worker that outlived its cancel's grace, and report its run CANCELED.

    The run is reported CANCELED before the kill, under the server's executions lock: the
    server's own orphan check (`_check_for_orphaned_runs`) reports a dead worker's unfinished run
    FAILED, and run retries would then launch it again. Returns whether it had to: a worker that
    stopped by itself is left alone.
    """
    with executions_lock or threading.Lock():
        if not process.is_alive():
            return False
        with DagsterInstance.from_ref(instance_ref) as instance:
            run = instance.get_run_by_id(run_id)
            if run is not None and run.status == DagsterRunStatus.CANCELING:
                instance.report_engine_event(
                    f"The run worker (pid {process.pid}) did not stop within {CANCEL_GRACE_SECONDS:.0f} s of "
                    "the cancel and was killed.",
                    run,
                )
                instance.report_run_canceled(run)
        process.kill()
        process.join(10)
    return True


def main(argv: list[str] | None = None) -> None:
    from dagster._cli.api import grpc_command

    # `grpc_command` imports DagsterApiServer from the module when called: hand it ours.
    dagster_grpc_server.DagsterApiServer = WarmApiServer  # type: ignore[misc]
    grpc_command.main(args=argv if argv is not None else sys.argv[1:], prog_name="jewel-code-server")


if __name__ == "__main__":
    main()
