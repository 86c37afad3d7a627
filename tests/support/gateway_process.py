"""`python -m gateway` in a process of its own, without Dagster: its memory is measured alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.e2e_stack import free_port


@contextmanager
def gateway_process(tmp_path: Path, **env: str) -> Iterator[tuple[str, int]]:
    """The gateway's base URL and process id; Dagster's port is closed (routes that need no
    Dagster answer as usual)."""
    port = free_port()
    environment = {
        **os.environ,
        "API_PORT": str(port),
        "BIND_HOST": "127.0.0.1",
        "DAGSTER_PORT": str(free_port()),
        "LOCAL_BLOB_ROOT": str(tmp_path / "blobs"),
        "LOG_LEVEL": "WARNING",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--log-level", "warning"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=2) as client:  # one for the wait (devtools.stack.wait_for_http says why)
            while True:
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the gateway did not start (exit code {process.poll()})")
                time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def memory_kb(pid: int, field: str = "VmRSS") -> int:
    """A figure of /proc/<pid>/status in kB: VmRSS (now) or VmHWM (the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")
