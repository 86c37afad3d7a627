"""Starts the real stack (dagster-webserver, dagster-daemon, gateway) on free loopback ports."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from devtools.stack import Stack, descendants, free_port, parent_pid, temporary_stack
from jewel_dagster.resources.selection import build_blob_store
from jewel_dagster.runtime.processes.forked_forkserver import RUN_WORKER_NAME
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import pending_start_path as pending_path
from tests.support.metrics import samples, value
from tests.support.warm_interpreter import warm_interpreter

# How long a test stack's processes get to exit after SIGTERM at the end of its test (then
# SIGKILL): Stack.stop's 10 s is for `make run`; the daemon alone took 6 s to join its threads on a
# loaded machine, at every stack's end. Nothing a test asserts depends on that exit (the fault
# tests that stop a process on purpose call Stack.stop themselves, with its own grace).
TEARDOWN_GRACE_SECONDS = 2.0


@contextmanager
def running_stack(root: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    """`devtools.stack.temporary_stack`, stopped with a short grace (TEARDOWN_GRACE_SECONDS), its
    processes forked from this worker's warm interpreter (tests/support/warm_interpreter.py)."""
    with temporary_stack(root, extra_env, spawner=warm_interpreter().popen) as stack:
        try:
            yield stack
        finally:
            stack.stop(grace=TEARDOWN_GRACE_SECONDS)  # temporary_stack's own stop finds nothing left


@contextmanager
def held_port() -> Iterator[int]:
    """A loopback port kept bound, not listening, for the block: a connection to it is refused as
    to a free port, but no other socket takes it meanwhile, while a server that binds with
    SO_REUSEADDR (uvicorn does) can still listen on it (Linux lets such sockets share a port when
    none but the server listens). A port only picked (`free_port`) and handed to a stack, to be
    listened on minutes later, was once taken in between (another test's socket, or an outgoing
    connection's local port): the reference server then could not bind it (EADDRINUSE)."""
    with socket.socket() as placeholder:
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        placeholder.bind(("127.0.0.1", 0))
        yield int(placeholder.getsockname()[1])


__all__ = [
    "free_port", "held_port", "launched_runs", "poll", "run_worker", "running_stack", "runs_of", "step_status",
    "wait_until",
]  # fmt: skip

_RUNS = """
query Runs($tag: String!) {
  runsOrError(filter: {tags: [{key: "dagster/partition", value: $tag}]}) {
    ... on Runs { results { runId jobName status tags { key value } stepStats { stepKey status startTime endTime } } }
  }
}"""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def run_worker(stack: Stack) -> int | None:
    """The process executing the run: a child of our code server's forkserver (warm workers:
    named RUN_WORKER_NAME by the forkserver the code server forked, or multiprocessing's spawned
    forkserver's child), or a spawned multiprocessing child of the daemon's own code server
    (CODE_SERVER=managed)."""
    root = stack.processes.get("code_server") or stack.processes["daemon"]
    for pid in descendants([root.pid]):
        cmdline = _cmdline(pid)
        if b"spawn_main" in cmdline or _comm(pid) == RUN_WORKER_NAME:
            return pid
        if b"forkserver" in cmdline and b"forkserver" in _cmdline(parent_pid(pid)):
            return pid  # forked by a spawned forkserver (itself the code server's child)
    return None


def runs_of(dagster_url: str, partition: str) -> list[dict[str, Any]]:
    """Every run of a request partition, newest first, straight from Dagster's GraphQL."""
    response = httpx.post(f"{dagster_url}/graphql", json={"query": _RUNS, "variables": {"tag": partition}}, timeout=30)
    return response.json()["data"]["runsOrError"]["results"]


def launched_runs(stack: Stack, partition: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """`runs_of` once the partition's start has settled: a run exists, the gateway holds no
    pending-start record for it, and its launcher has nothing queued or in flight (the
    `jewel_starts_pending` gauge is 0).

    A start answers before its run is launched (START_IN_BACKGROUND), and the first run seen is
    not the last word: a duplicate launch a moment later must show too. The launcher deletes the
    record after its launch and counts a start as pending until its thread is done with it, so
    once both say "done", no launch of this start can still come.
    """

    def settled() -> list[dict[str, Any]] | None:
        if _starts_pending(stack) or _pending_start_recorded(stack, partition):
            return None
        return runs_of(stack.dagster_url, partition) or None

    runs: list[dict[str, Any]] = wait_until(settled, f"the start of {partition} launched and settled", timeout)
    return runs


def _starts_pending(stack: Stack) -> float:
    """The gateway's `jewel_starts_pending` gauge (METRICS_API_KEY sent when the stack sets one)."""
    token = stack.env.get("METRICS_API_KEY")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{stack.gateway_url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, f"/metrics: {response.status_code} {response.text[:200]} (METRICS_API_KEY?)"
    return value(samples(response.text), "jewel_starts_pending")


def _pending_start_recorded(stack: Stack, partition: str) -> bool:
    """Whether the gateway's pending-start record of the partition is still in the blob store."""
    connection = stack.env.get("AZURE_STORAGE_CONNECTION_STRING")
    settings = PipelineSettings(
        local_blob_root=stack.env["LOCAL_BLOB_ROOT"],
        azure_container_name=stack.env.get("AZURE_CONTAINER_NAME", "jewelry-uploads"),
        azure_storage_connection_string=SecretStr(connection) if connection else None,
    )
    return build_blob_store(settings, inside_dagster=False).exists_path(pending_path(partition))


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 120.0, every: float = 0.2) -> Any:
    """Call ``condition`` until it returns something truthy (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(every)


def step_status(dagster_url: str, partition: str, step: str) -> str | None:
    """The Dagster status of one step (IN_PROGRESS, SUCCESS, ...) in the partition's newest run."""
    runs = runs_of(dagster_url, partition)
    stats = {s["stepKey"]: s["status"] for s in runs[0]["stepStats"]} if runs else {}
    return stats.get(step)


def poll(
    client: httpx.Client,
    workflow_id: str,
    until: Callable[[dict[str, Any]], bool],
    timeout: float = 120.0,
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """GET the workflow every 0.2 s until ``until`` holds; returns every state seen."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/workflow/{workflow_id}", headers=headers)
        assert response.status_code == 200, response.text
        seen.append(response.json())
        if until(seen[-1]):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"workflow {workflow_id} did not reach the state in {timeout} s; last: {seen[-1:]}")


# Two callers with API keys, no rate limit in the way, no background runs: the stacks that test
# ownership, idempotency and fuzzing.
TWO_CALLERS = {
    "GATEWAY_API_KEYS": "key-alpha,key-beta",
    "RATE_LIMIT_PER_MINUTE": "100000",
    "REGENERATION_SENSOR_ENABLED": "false",
    "METRICS_API_KEY": "metrics-key-of-the-test",  # launched_runs reads the launcher's gauge
}
ALPHA = {"X-API-Key": "key-alpha"}
BETA = {"Authorization": "Bearer key-beta"}
