"""Starts the real stack (dagster-webserver, dagster-daemon, gateway) on free loopback ports."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from gateway.stack import Stack, prepare_dagster_home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_stack(root: Path, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(root / "dagster_home"),
        "LOCAL_BLOB_ROOT": str(root / "blobs"),
        **(extra_env or {}),
    }
    prepare_dagster_home(env)
    stack = Stack(env, dagster_port=free_port(), gateway_port=free_port(), log_dir=logs)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def poll(
    client: httpx.Client, workflow_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 120.0
) -> list[dict[str, Any]]:
    """GET the workflow every 0.2 s until ``until`` holds; returns every state seen."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/workflow/{workflow_id}")
        assert response.status_code == 200, response.text
        seen.append(response.json())
        if until(seen[-1]):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"workflow {workflow_id} did not reach the state in {timeout} s; last: {seen[-1:]}")
