"""A test stack's start: its processes started cold (`subprocess.Popen`, what `make run` does)
against forked from the tests' warm interpreter (tests/support/warm_interpreter.py), alternated in
one run.

    .venv/bin/python -m benchmarks.stack_start [--repeats 5]

Each start is `devtools.stack.temporary_stack` with the instant stand-ins, up to the gateway's
/health answering with the code location loaded. Measured at that point: the wall time of the
start and the CPU the stack's processes and their children used (user + system, from /proc).
The warm interpreter's own import is paid once per xdist worker and printed apart. Prints median
and p95 of each, and ratio = cold median / warm median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import percentile
from devtools.stack import Spawner, Stack, descendants, temporary_stack
from tests.support.warm_interpreter import warm_interpreter

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its children it reaped, 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / _TICKS


def stack_cpu_seconds(stack: Stack) -> float:
    """CPU of a stack's processes and their descendants so far (each one's reaped children too)."""
    roots = [process.pid for process in stack.processes.values()]
    return sum(_cpu_seconds(pid) for pid in [*roots, *descendants(roots)])


def _start_once(root: Path, spawner: Spawner) -> tuple[float, float]:
    began = time.monotonic()
    with temporary_stack(root, {"LOCAL_BACKENDS": "instant"}, spawner=spawner) as stack:
        wall = time.monotonic() - began
        cpu = stack_cpu_seconds(stack)
    return wall, cpu


def _summary(name: str, values: list[float], unit: str) -> str:
    return f"{name}: median {statistics.median(values):.2f} {unit}, p95 {percentile(values, 95):.2f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    began = time.monotonic()
    warm = warm_interpreter()
    print(
        f"warm interpreter ready in {time.monotonic() - began:.2f} s, {_cpu_seconds(warm.pid):.2f} CPU-s"
        " (its imports, paid once per xdist worker)"
    )
    results: dict[str, dict[str, list[float]]] = {"cold": {"wall": [], "cpu": []}, "warm": {"wall": [], "cpu": []}}
    spawners: dict[str, Spawner] = {"cold": subprocess.Popen, "warm": warm.popen}
    with tempfile.TemporaryDirectory(prefix="stack-start-") as folder:
        for index in range(args.repeats):
            for name in ("cold", "warm") if index % 2 == 0 else ("warm", "cold"):
                wall, cpu = _start_once(Path(folder) / f"{name}-{index}", spawners[name])
                results[name]["wall"].append(wall)
                results[name]["cpu"].append(cpu)
                print(f"  {name} #{index}: {wall:.2f} s, {cpu:.2f} CPU-s")
    for name, figures in results.items():
        print(f"{name}: {_summary('start', figures['wall'], 's')}; {_summary('CPU', figures['cpu'], 'CPU-s')}")
    for what in ("wall", "cpu"):
        ratio = statistics.median(results["cold"][what]) / statistics.median(results["warm"][what])
        print(f"ratio cold / warm ({what}): {ratio:.2f}x")


if __name__ == "__main__":
    main()
