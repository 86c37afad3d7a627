"""A run worker's captured stdout and stderr mirrored by one process each instead of two.

Dagster's compute log capture (the in-process executor captures a run's steps once, just before
its first step: the LOGS_CAPTURED event) redirects each stream to a file and mirrors the file back
to the process's own stream with `tail -F`, plus, for each tail, a Python interpreter
(`dagster/_core/execution/scripts/watch_orphans.py`) whose only job is to kill that tail when the
worker dies without cleaning up. So every run started two interpreters (~20 ms of wall and
10-20 ms of CPU each) at the moment its first step starts, beside the photo's decode and the
resize call on these 2 cores (py-spy of the code server's process tree: two watch_orphans
children per run worker; issue 28).

GNU tail does that watching itself: `--pid=PID` ends it after PID dies, checked at the same 1 s
as the watcher. Here Dagster's `execute_posix_tail` is replaced by the same tail with `--pid` of
the worker and no watcher: the same file, the same stream, the same clean-up at the end (the
optional DAGSTER_COMPUTE_LOG_TAIL_WAIT_AFTER_FINISH wait, then terminate). Only where `tail` is
GNU coreutils' (Debian's python:3.11-slim, this machine); elsewhere (busybox, BSD) Dagster's stays.

Installed by importing this module: the warm code server's forkserver does (PRELOAD), so every run
worker forked from it mirrors this way; any other process keeps Dagster's.

Private symbols used (checked against dagster 1.13.27):
- `dagster._core.execution.compute_logs.execute_posix_tail(path, stream)`: a context manager
  yielding pids, looked up in its module by `tail_to_stream` at each call (replaced here).
- `dagster._core.execution.compute_logs._fileno(stream)` and `_clean_up_subprocess(process)`.
Canary: tests/unit/test_compute_log_tail.py (one child per stream, the mirror works, the tail
ends when its process is killed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster._core.execution import compute_logs

STOCK_EXECUTE_POSIX_TAIL = compute_logs.execute_posix_tail


def tail_follows_pid() -> bool:
    """Whether this machine's `tail` is GNU's, which takes `--pid`."""
    tail = shutil.which("tail")
    if tail is None:
        return False
    try:
        answer = subprocess.run([tail, "--version"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return answer.returncode == 0 and "GNU coreutils" in answer.stdout


@contextmanager
def execute_posix_tail(path: str, stream: Any) -> Iterator[tuple[int, None]]:
    """Dagster's `execute_posix_tail`, with tail ending itself when this process dies."""
    tail_cmd = ["tail", "-F", "-c", "+0", f"--pid={os.getpid()}", path]
    stream = stream if compute_logs._fileno(stream) else None
    tail_process = None
    try:
        tail_process = subprocess.Popen(tail_cmd, stdout=stream)
        yield (tail_process.pid, None)
    finally:
        time.sleep(float(os.getenv("DAGSTER_COMPUTE_LOG_TAIL_WAIT_AFTER_FINISH", "0")))
        if tail_process:
            compute_logs._clean_up_subprocess(tail_process)


def install() -> bool:
    """Mirror with GNU tail alone in this process; False (Dagster's kept) without GNU tail."""
    if compute_logs.execute_posix_tail is execute_posix_tail:
        return True
    if not tail_follows_pid():
        return False
    compute_logs.execute_posix_tail = execute_posix_tail
    return True


install()
