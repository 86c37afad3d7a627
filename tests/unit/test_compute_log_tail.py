"""A run worker's captured streams are mirrored by GNU tail alone (jewel_dagster/runtime/loggers/
compute_log_tail.py): one child per stream instead of a tail and a Python watcher, the same mirror,
and the tail still ends when its worker dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jewel_dagster.runtime.loggers import compute_log_tail

compute_logs = compute_log_tail.compute_logs  # Dagster's module the patch replaces a function of

pytestmark = pytest.mark.skipif(not compute_log_tail.tail_follows_pid(), reason="needs GNU tail")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "State:\tZ" not in status.read_text()


def _arguments(pid: int) -> list[str]:
    """The process's argv. Popen returns once the child's exec closed its close-on-exec pipe,
    which the kernel does before the new program's arguments are set up: read at once, on a
    loaded machine, /proc/<pid>/cmdline can still be empty (CI saw it). So it is read until set."""
    deadline = time.monotonic() + 5
    while not (raw := Path(f"/proc/{pid}/cmdline").read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return raw.decode().split("\0")


def test_a_stream_is_mirrored_by_one_tail_and_no_watcher(tmp_path: Path) -> None:
    """Canary too: Dagster's tail_to_stream looks the function up at each call, so the patch takes."""
    assert compute_log_tail.install()
    assert compute_logs.execute_posix_tail is compute_log_tail.execute_posix_tail
    captured, mirror = tmp_path / "step.out", tmp_path / "mirror.out"
    captured.write_text("hello from a step\n")
    with mirror.open("w") as stream, compute_logs.tail_to_stream(str(captured), stream) as (tail_pid, watcher_pid):
        assert watcher_pid is None
        assert f"--pid={os.getpid()}" in _arguments(tail_pid)
        deadline = time.monotonic() + 5
        while "hello from a step" not in mirror.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert mirror.read_text() == "hello from a step\n"
    assert not _alive(tail_pid)


WORKER = """
import signal, sys
from jewel_dagster.runtime.loggers import compute_log_tail
with compute_log_tail.compute_logs.tail_to_stream(sys.argv[1], sys.stdout) as (tail_pid, _):
    print(tail_pid, file=sys.stderr, flush=True)
    signal.pause()  # a step at work, until the test kills this worker
"""


def test_the_tail_ends_when_its_worker_is_killed(tmp_path: Path) -> None:
    captured = tmp_path / "step.out"
    captured.write_text("")
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(captured)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stderr is not None
        tail_pid = int(worker.stderr.readline())
        assert _alive(tail_pid)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        deadline = time.monotonic() + 5  # tail looks at the process every second
        while _alive(tail_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(tail_pid), "an orphaned tail outlived its worker"
    finally:
        worker.kill()
        worker.wait(10)
