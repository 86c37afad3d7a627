"""Canary for jewel_dagster/runtime/processes/warm_code_server.py and forked_forkserver.py: run
workers are forked from a forkserver the code server forked at its start, not spawned.

The patch replaces `dagster._grpc.server.DagsterApiServer` before `dagster api grpc` imports it. If
Dagster stops looking the class up there, the code server still works but spawns its run workers
(`python -c 'from multiprocessing.spawn import spawn_main; ...'`) and every request pays the
imports again. This test launches one request and looks, from /proc, at how its run worker began.
It shares test_run_queue's stack (WOKEN_QUEUE_STACK: instant backends, no re-generation sensor,
so the only run worker is this request's).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.stack import Stack, descendants, parent_pid
from jewel_dagster.runtime.processes.forked_forkserver import FORKSERVER_NAME, RUN_WORKER_NAME
from tests.support.e2e_flows import CUP, PHOTO, finished
from tests.support.shared_stacks import WOKEN_QUEUE_STACK, SharedStacks, shared_stack

pytestmark = pytest.mark.e2e


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _forkservers(stack: Stack) -> tuple[list[int], list[int]]:
    """The code server's forkservers: (forked from it, spawned by multiprocessing)."""
    code_server = stack.processes["code_server"].pid
    children = [pid for pid in descendants([code_server]) if parent_pid(pid) == code_server]
    forked = [pid for pid in children if _comm(pid) == FORKSERVER_NAME]
    spawned = [pid for pid in children if "multiprocessing.forkserver import main" in _cmdline(pid)]
    return forked, spawned


def _run_workers(stack: Stack) -> tuple[list[int], list[int]]:
    """Processes the code server started for runs: (forked from its forkserver, spawned)."""
    code_server = stack.processes["code_server"].pid
    forkservers = set(_forkservers(stack)[0])
    forked, spawned = [], []
    for pid in descendants([code_server]):
        parent = parent_pid(pid)
        if parent == code_server and "spawn_main" in _cmdline(pid):
            spawned.append(pid)
        elif parent in forkservers:
            forked.append(pid)
    return forked, spawned


@pytest.fixture(scope="module")
def stack(shared_stacks: SharedStacks) -> Iterator[Stack]:
    yield from shared_stack(shared_stacks, WOKEN_QUEUE_STACK)


def test_run_workers_are_forked_from_the_preloaded_forkserver(stack: Stack) -> None:
    assert "code_server" in stack.processes, "the stack runs the warm code server by default"
    # Canary of processes/forked_forkserver.py: the forkserver runs before any request, forked
    # from the code server (named, its command line the code server's); not one that
    # multiprocessing spawned at the first run (`python -c 'from multiprocessing.forkserver ...`).
    forked_servers, spawned_servers = _forkservers(stack)
    assert spawned_servers == [], f"a forkserver was spawned: {[_cmdline(p) for p in spawned_servers]}"
    assert len(forked_servers) == 1, "the code server forked no forkserver at its start"
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        started = client.post("/workflow/start", json={"originalImageBase64": PHOTO, "maskPoints": [CUP]})
        assert started.status_code == 200, started.text
        workflow = started.json()["workflowId"]
        deadline = time.monotonic() + 120
        while True:
            forked, spawned = _run_workers(stack)
            assert spawned == [], f"run worker spawned, not forked: {[_cmdline(p) for p in spawned]}"
            if forked:
                break
            state = client.get(f"/workflow/{workflow}").json()
            assert not finished(state), f"the run ended and no forked run worker was seen: {state}"
            assert time.monotonic() < deadline, "no run worker appeared within 120 s"
            time.sleep(0.05)
        (worker,) = forked
        assert "spawn_main" not in _cmdline(worker)
        assert parent_pid(worker) == forked_servers[0]
        # The child names itself in an after-fork hook (os.register_at_fork): a look between the
        # fork and the hook sees its parent's name (seen once on a loaded machine).
        named = time.monotonic() + 10
        while (name := _comm(worker)) == FORKSERVER_NAME and time.monotonic() < named:
            time.sleep(0.01)
        assert name == RUN_WORKER_NAME
