"""The scale-out process stack (Celery run launcher) after a `kill -9` of its code server(s): once
restarted as a supervisor would, the next request completes (issue 32, found by the chaos soak).

The stack used to let the webserver and the daemon each spawn a code server of their own
(workspace.yaml, a python_module location). Killed, the daemon's came back at its next workspace
refresh but the webserver's never did: every launch failed with DagsterUserCodeUnreachableError and
each start was recorded FAILED. Now the stack runs one code server, as docker-compose does, and both
load it as a `grpc_server` location: Dagster watches that server and reloads the location when it
answers again with a new server id.

The test kills every code server process of the stack, whichever design it has, and restarts the
stack's own one (the supervisor's job). PostgreSQL and Redis: the machine's (tests/support/infra.py).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.stack import Stack, descendants
from jewel_dagster.runtime.processes.forked_forkserver import FORKSERVER_NAME, RUN_WORKER_NAME
from tests.support.e2e_flows import CUP, PHOTO, finished
from tests.support.e2e_stack import poll, running_stack
from tests.support.infra import postgres_database, redis_url

pytestmark = pytest.mark.e2e
BODY = {"originalImageBase64": PHOTO, "maskPoints": [CUP]}
# The webserver polls its code server's id every second and reloads the location when it changes;
# a request takes ~10-30 s on a loaded 2-core machine. A timeout for the poll, not a promise.
COMPLETES_WITHIN = 120.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("code-server-restart")
    with postgres_database() as pg_url:
        env = {
            "DAGSTER_PG_URL": pg_url,
            "RUN_LAUNCHER": "celery",
            "CELERY_BROKER_URL": redis_url(10),
            "CELERY_RESULT_BACKEND": redis_url(11),
            "CELERY_QUEUE": f"jewel-test-{uuid.uuid4().hex[:8]}",  # the broker may be shared
            "CELERY_WORKERS": "1",
            "CELERY_CONCURRENCY": "1",
            "LOCAL_BACKENDS": "instant",
            "REGENERATION_SENSOR_ENABLED": "false",
            # Without the fix the start fails only after this long: the test fails sooner.
            "START_GIVE_UP_SECONDS": "30",
        }
        # running_stack: SIGKILL 2 s after the SIGTERM at the end (temporary_stack's 10 s grace
        # went by whole at every run: a process of the Celery stack outlives it).
        with running_stack(root / "stack", env) as running:
            yield running


def _code_servers(stack: Stack) -> list[int]:
    """Every code server of the stack: its own (by name: forked from the tests' warm interpreter,
    its command line is that interpreter's), and any `dagster api grpc` the webserver or daemon
    spawned."""
    roots = [p.pid for p in stack.processes.values()]
    found = [stack.processes["code_server"].pid] if "code_server" in stack.processes else []
    for pid in descendants(roots):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            # The forkserver a code server forks, and its run workers, keep its command line.
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            forked_by_a_code_server = comm in (FORKSERVER_NAME, RUN_WORKER_NAME)
        except OSError:
            continue
        if (b" api grpc" in cmdline or b"warm_code_server" in cmdline) and not forked_by_a_code_server:
            found.append(pid)
    return found


def _completes(client: httpx.Client) -> float:
    """Start a request and wait for COMPLETED; how long it took."""
    began = time.monotonic()
    started = client.post("/workflow/start", json=BODY)
    assert started.status_code == 200, started.text
    final = poll(client, started.json()["workflowId"], finished, timeout=COMPLETES_WITHIN)[-1]
    assert final["status"] == "COMPLETED", final
    return time.monotonic() - began


def test_a_request_completes_after_the_code_servers_are_killed_and_restarted(stack: Stack) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        before = _completes(client)
        pids = _code_servers(stack)
        assert pids, "the stack runs no code server"
        if "code_server" in stack.processes:
            stack.kill("code_server")  # kill -9 of its process group
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stack.start_code_server()  # its supervisor restarts it (a no-op when the webserver spawns them)
        after = _completes(client)
        print(f"\nrequest before the kill: {before:.1f} s; first request after the restart: {after:.1f} s")
