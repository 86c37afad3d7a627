"""Starts the real stack (dagster-webserver, dagster-daemon, gateway) on free loopback ports."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from devtools.stack import Stack, descendants, free_port, parent_pid, temporary_stack

running_stack = temporary_stack
__all__ = ["free_port", "poll", "run_worker", "running_stack", "runs_of", "step_status", "wait_until"]

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


def run_worker(stack: Stack) -> int | None:
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


def runs_of(dagster_url: str, partition: str) -> list[dict[str, Any]]:
    """Every run of a request partition, newest first, straight from Dagster's GraphQL."""
    response = httpx.post(f"{dagster_url}/graphql", json={"query": _RUNS, "variables": {"tag": partition}}, timeout=30)
    return response.json()["data"]["runsOrError"]["results"]


def launched_runs(dagster_url: str, partition: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """`runs_of` once the partition has a run: a start answers before its run is launched
    (START_IN_BACKGROUND), so right after a POST Dagster may not know the run yet."""
    return wait_until(lambda: runs_of(dagster_url, partition), f"a run of {partition}", timeout)  # type: ignore[no-any-return]


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
}
ALPHA = {"X-API-Key": "key-alpha"}
BETA = {"Authorization": "Bearer key-beta"}
