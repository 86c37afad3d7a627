"""`make run` (`python -m devtools.stack`): answers /health, a request completes on the classical
stand-ins that `make run` defaults to, meeting the README's fidelity thresholds, and SIGTERM (or
Ctrl-C) stops every process it started, the code server's forkserver included. (The only test
whose stack runs the classical stand-ins end to end: the others run the instant ones, each
classical run costing ~2.5 CPU-s more; their pixels are tests/unit/test_pipeline.py's.)

The `.env.example` half of `cp .env.example .env && make run` is tests/unit/test_make_run_environment.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devtools.stack import REPO_ROOT, descendants, free_port, wait_for_http
from tests.support.e2e_flows import full_request_completes

pytestmark = pytest.mark.e2e


def _tail(log: Path, lines: int = 40) -> str:
    """The end of `make run`'s output, for a failure message: why it stopped is there."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_make_run_serves_a_request_and_stops_every_process_it_started(tmp_path: Path) -> None:
    api_port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "LOCAL_BLOB_ROOT": str(tmp_path / "blobs"),
        "DAGSTER_PORT": str(free_port()),
        "API_PORT": str(api_port),
        "REGENERATION_SENSOR_ENABLED": "false",
    }
    with open(tmp_path / "make-run.log", "wb") as log:
        main = subprocess.Popen(
            [sys.executable, "-m", "devtools.stack"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    started: list[int] = []
    try:
        gateway = f"http://127.0.0.1:{api_port}"
        # Ready when it says so, as a person at the machine sees it: the banner with the sample request
        # comes once every process answers (the gateway answers /health earlier, degraded, while
        # Dagster's processes still start beside it).
        deadline = time.monotonic() + 180
        while "Try one request" not in (tmp_path / "make-run.log").read_text(errors="replace"):
            assert main.poll() is None, "make run exited before it was ready:\n" + _tail(tmp_path / "make-run.log")
            assert time.monotonic() < deadline, "make run did not print its banner within 180 s"
            time.sleep(0.2)
        wait_for_http(f"{gateway}/health", 10, main)
        with httpx.Client(base_url=gateway, timeout=30) as client:
            final = full_request_completes(client)  # the README's fidelity thresholds met
            local = {"imageManipulator": "local-classical", "sam3": "local-grabcut", "flux": "local-studio-sweep"}
            assert local.items() <= final["result"]["backends"].items(), final["result"]["backends"]
        started = descendants([main.pid])
        names = {Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace") for pid in started}
        assert len(started) >= 5, names  # code server, its forkserver, webserver, daemon, gateway
        main.send_signal(signal.SIGTERM)  # what Ctrl-C (SIGINT) does too
        assert main.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while (left := [pid for pid in started if _alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == [], f"still running after make run stopped: {left}"
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()
        for pid in started:  # only what this test started, by pid
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
