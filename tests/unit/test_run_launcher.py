"""Canary for jewel_dagster/runtime/instance_plugins/run_launcher.py: how its health check answers,
without a code server.

The path where a live code server answers "no worker for this run" is tested end to end in
tests/e2e/test_process_faults.py (a killed code server's run fails and is retried).
"""

from __future__ import annotations

import json
import uuid

import dagster as dg

from devtools.stack import free_port

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
