"""Where a command's CPU goes, by kind of process: `python -m benchmarks.process_cpu -- make test`.

The suite's wall time on 2 cores is bound by its CPU (issue 27), and `/usr/bin/time` misses most
of it: processes orphaned when a stack's process group is killed are reaped by init, and
PostgreSQL's backends belong to the server. So this samples every process of the machine from
/proc every `--interval` seconds while the command runs, keeps each process's last reading of
user + system time (a process that lives shorter than an interval is missed, and each loses at
most one interval at its end), and prints the CPU-seconds by kind (the process's name, which the
tests' warm interpreter sets to the program it runs) next to the whole machine's from /proc/stat.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcessReading:
    """One process's identity (pid and start time, as pids are reused) and its CPU so far."""

    kind: str
    cpu_seconds: float


def _kind(pid: int, comm: str) -> str:
    """A name for what the process is: its comm, with the module or script for bare interpreters."""
    if comm not in {"python", "python3", "python3.11"}:
        return comm
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return comm
    words = [word.decode(errors="replace") for word in argv if word]
    for index, word in enumerate(words[:-1]):
        if word == "-m" or word == "-c":
            return f"python {word} {words[index + 1][:60]}"
    return "python " + " ".join(os.path.basename(word) for word in words[1:3])


def _read_processes() -> dict[tuple[int, int], ProcessReading]:
    """Every process's CPU so far, keyed by (pid, start time in ticks)."""
    readings: dict[tuple[int, int], ProcessReading] = {}
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        parent, utime, stime, start = int(fields[1]), int(fields[11]), int(fields[12]), int(fields[19])
        readings[(pid, start)] = ProcessReading(_kind(pid, comm), (utime + stime) / CLOCK_TICKS)
        parents[pid] = parent
    # A process forked by one of its own kind (a forkserver's run workers, a pool's children)
    # is counted apart from its parent: "<kind> (forked)".
    kinds = {pid: reading.kind for (pid, _), reading in readings.items()}
    for (pid, _), reading in readings.items():
        if kinds.get(parents[pid]) == reading.kind:
            reading.kind += " (forked)"
    return readings


def _merge(latest: dict[tuple[int, int], ProcessReading], sample: dict[tuple[int, int], ProcessReading]) -> None:
    """Keep each process's newest CPU but its first kind: a zombie's command line reads empty."""
    for key, reading in sample.items():
        known = latest.get(key)
        latest[key] = reading if known is None else ProcessReading(known.kind, reading.cpu_seconds)


def _machine_busy_seconds() -> float:
    """All cores' non-idle time so far, from /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(value) for value in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    arguments = parser.parse_args()
    command = [word for word in arguments.command if word != "--"]
    if not command:
        parser.error("name a command after --")
    before = _read_processes()
    busy_before = _machine_busy_seconds()
    started = time.monotonic()
    child = subprocess.Popen(command)
    latest: dict[tuple[int, int], ProcessReading] = {}
    while child.poll() is None:
        _merge(latest, _read_processes())
        time.sleep(arguments.interval)
    _merge(latest, _read_processes())
    wall = time.monotonic() - started
    busy = _machine_busy_seconds() - busy_before
    by_kind: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for key, reading in latest.items():
        spent = reading.cpu_seconds - (before[key].cpu_seconds if key in before else 0.0)
        if spent <= 0.0:
            continue
        by_kind[reading.kind] += spent
        count[reading.kind] += 1
    sampled = sum(by_kind.values())
    print(
        f"\nexit {child.returncode}; wall {wall:.1f} s; machine busy {busy:.1f} CPU-s; sampled {sampled:.1f} CPU-s",
        file=sys.stderr,
    )
    for kind, seconds in sorted(by_kind.items(), key=lambda item: -item[1])[: arguments.top]:
        print(f"{seconds:8.1f} CPU-s {count[kind]:5d} processes  {kind}", file=sys.stderr)
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
