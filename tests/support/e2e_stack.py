"""Starts the real stack (dagster-webserver, dagster-daemon, gateway) on free loopback ports."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from devtools.stack import free_port, temporary_stack

running_stack = temporary_stack
__all__ = ["free_port", "poll", "running_stack", "runs_of"]

_RUNS = """
query Runs($tag: String!) {
  runsOrError(filter: {tags: [{key: "dagster/partition", value: $tag}]}) {
    ... on Runs { results { runId jobName status tags { key value } stepStats { stepKey startTime endTime } } }
  }
}"""


def runs_of(dagster_url: str, partition: str) -> list[dict[str, Any]]:
    """Every run of a request partition, newest first, straight from Dagster's GraphQL."""
    response = httpx.post(f"{dagster_url}/graphql", json={"query": _RUNS, "variables": {"tag": partition}}, timeout=30)
    return response.json()["data"]["runsOrError"]["results"]


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
