"""Faults: a run worker killed with SIGKILL, the gateway restarted mid-run, a service outage."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from devtools.stack import Stack, descendants, parent_pid
from tests.support.e2e_flows import CUP, PHOTO, finished
from tests.support.e2e_stack import free_port, poll, running_stack, runs_of
from tests.support.servers import service_urls

pytestmark = pytest.mark.e2e
BODY = {"originalImageBase64": PHOTO, "maskPoints": [CUP]}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def _run_worker(stack: Stack) -> int | None:
    """The process executing the run: a child of our code server's forkserver (warm workers), or
    a spawned multiprocessing child of the daemon's own code server (CODE_SERVER=managed)."""
    root = stack.processes.get("code_server") or stack.processes["daemon"]
    for pid in descendants([root.pid]):
        cmdline = _cmdline(pid)
        if b"spawn_main" in cmdline:
            return pid
        if b"forkserver" in cmdline and b"forkserver" in _cmdline(parent_pid(pid)):
            return pid  # forked by the forkserver (the forkserver itself is the code server's child)
    return None


def test_killed_run_worker_is_detected_and_the_run_retried(tmp_path: Path) -> None:
    with running_stack(tmp_path, {"REGENERATION_SENSOR_ENABLED": "false"}) as stack:
        with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
            workflow = client.post("/workflow/start", json=BODY).json()["workflowId"]
            poll(client, workflow, lambda s: s["progress"] >= 15 or finished(s))
            worker = _run_worker(stack)
            assert worker is not None, "the run worker process was not found mid-run"
            os.kill(worker, signal.SIGKILL)
            final = poll(client, workflow, lambda s: s["status"] == "COMPLETED", timeout=120)[-1]
            assert final["result"]["flux_metrics"]["iou"] > 0
            runs = runs_of(stack.dagster_url, workflow)
            statuses = sorted(r["status"] for r in runs)
            assert statuses == ["FAILURE", "SUCCESS"], statuses
            retry = next(r for r in runs if r["status"] == "SUCCESS")
            assert {"key": "dagster/retry_number", "value": "1"} in retry["tags"]


def test_gateway_restarted_mid_run_loses_nothing(tmp_path: Path) -> None:
    with running_stack(tmp_path, {"REGENERATION_SENSOR_ENABLED": "false"}) as stack:
        with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
            workflow = client.post("/workflow/start", json=BODY).json()["workflowId"]
            poll(client, workflow, lambda s: s["progress"] >= 15 or finished(s))
        stack.stop(("gateway",))
        time.sleep(0.5)
        stack.start_gateway()
        with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
            final = poll(client, workflow, finished)[-1]
        assert final["status"] == "COMPLETED" and final["result"]["flux_result_base64"]


def test_service_outage_longer_than_the_retry_budget_fails_naming_the_service(tmp_path: Path) -> None:
    nothing_there = f"http://127.0.0.1:{free_port()}"  # the reference server, stopped
    env = {key.upper(): value for key, value in service_urls(nothing_there).items()}
    env["REGENERATION_SENSOR_ENABLED"] = "false"
    with running_stack(tmp_path, env) as stack, httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        workflow = client.post("/workflow/start", json=BODY).json()["workflowId"]
        final = poll(client, workflow, finished, timeout=120)[-1]
    assert final["status"] == "FAILED"
    assert final["failedStep"] == "RESIZING_IMAGE"
    assert "ImageManipulator" in final["error"] and "unreachable" in final["error"]
