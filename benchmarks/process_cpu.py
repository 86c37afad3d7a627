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
import bisect
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from benchmarks.pytest_timeline import TIMELINE_DIR_ENV

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcessReading:
    """One process's identity (pid and start time, as pids are reused) and its CPU so far."""

    kind: str
    cpu_seconds: float
    parent: int = 0


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
        readings[(pid, start)] = ProcessReading(_kind(pid, comm), (utime + stime) / CLOCK_TICKS, parent)
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
        latest[key] = reading if known is None else ProcessReading(known.kind, reading.cpu_seconds, reading.parent)


def _machine_busy_seconds() -> float:
    """All cores' non-idle time so far, from /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(value) for value in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLOCK_TICKS


XDIST_WORKER_MARK = "sys.stdin.readline"  # execnet starts a worker as `python -c "...exec(eval(sys.stdin.readline()))"`


def _xdist_worker_of(pid: int, by_pid: dict[int, ProcessReading]) -> int | None:
    """The xdist worker a process descends from (itself included), if its line of parents holds one."""
    for _ in range(64):
        reading = by_pid.get(pid)
        if reading is None:
            return None
        if XDIST_WORKER_MARK in reading.kind:
            return pid
        pid = reading.parent
    return None


@dataclass
class WorkerSamples:
    """CPU-seconds of one xdist worker and its descendants, by the monotonic time of the sample."""

    seconds_at: dict[float, float]


def _charge(
    previous: dict[tuple[int, int], float],
    sample: dict[tuple[int, int], ProcessReading],
    at: float,
    workers: dict[int, WorkerSamples],
) -> None:
    """Each process's CPU since the last sample, charged to its xdist worker at time ``at``."""
    by_pid = {key[0]: reading for key, reading in sample.items()}
    for key, reading in sample.items():
        spent = reading.cpu_seconds - previous.get(key, 0.0)
        previous[key] = reading.cpu_seconds
        if spent <= 0.0:
            continue
        worker = _xdist_worker_of(key[0], by_pid)
        if worker is not None:
            samples = workers.setdefault(worker, WorkerSamples({}))
            samples.seconds_at[at] = samples.seconds_at.get(at, 0.0) + spent


def _by_test_file(timelines: Path, workers: dict[int, WorkerSamples]) -> dict[str, tuple[float, float]]:
    """CPU-seconds and wall seconds by test file, from the workers' timelines (pytest_timeline)."""
    tests_of: dict[int, list[dict[str, float | str]]] = defaultdict(list)
    for timeline in timelines.glob("*.jsonl"):
        for line in timeline.read_text().splitlines():
            entry = json.loads(line)
            if entry["id"] != "collection":
                tests_of[int(entry["pid"])].append(entry)
    cpu: dict[str, float] = defaultdict(float)
    wall: dict[str, float] = defaultdict(float)
    for worker, samples in workers.items():
        tests = sorted(tests_of.get(worker, []), key=lambda entry: float(entry["start"]))
        starts = [float(entry["start"]) for entry in tests]
        for entry in tests:
            wall[str(entry["id"]).split("::", 1)[0]] += float(entry["wall"])
        for at, seconds in samples.seconds_at.items():
            index = bisect.bisect_right(starts, at) - 1
            if index < 0:
                cpu["(a worker's start and collection)"] += seconds
            elif index == len(tests) - 1 and at > starts[index] + float(tests[index]["wall"]) + 1.0:
                cpu["(a worker's end)"] += seconds
            else:
                cpu[str(tests[index]["id"]).split("::", 1)[0]] += seconds
    return {name: (cpu[name], wall.get(name, 0.0)) for name in cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--by-test-file", action="store_true", help="charge the CPU to pytest's test files")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    arguments = parser.parse_args()
    command = [word for word in arguments.command if word != "--"]
    if not command:
        parser.error("name a command after --")
    env = dict(os.environ)
    timelines = Path(tempfile.mkdtemp(prefix="test-timeline-"))
    if arguments.by_test_file:
        env["PYTEST_ADDOPTS"] = f"{env.get('PYTEST_ADDOPTS', '')} -p benchmarks.pytest_timeline".strip()
        env[TIMELINE_DIR_ENV] = str(timelines)
    before = _read_processes()
    previous = {key: reading.cpu_seconds for key, reading in before.items()}
    workers: dict[int, WorkerSamples] = {}
    busy_before = _machine_busy_seconds()
    started = time.monotonic()
    child = subprocess.Popen(command, env=env)
    latest: dict[tuple[int, int], ProcessReading] = {}
    while True:
        running = child.poll() is None
        sample = _read_processes()
        _merge(latest, sample)
        _charge(previous, sample, time.monotonic(), workers)
        if not running:
            break
        time.sleep(arguments.interval)
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
        f"\nexit {child.returncode}; wall {wall:.1f} s; machine busy {busy:.1f} CPU-s ({busy / wall:.2f} cores);"
        f" sampled {sampled:.1f} CPU-s",
        file=sys.stderr,
    )
    for kind, seconds in sorted(by_kind.items(), key=lambda item: -item[1])[: arguments.top]:
        print(f"{seconds:8.1f} CPU-s {count[kind]:5d} processes  {kind}", file=sys.stderr)
    if arguments.by_test_file:
        files = _by_test_file(timelines, workers)
        charged = sum(seconds for seconds, _ in files.values())
        print(f"\nby test file: {charged:.1f} CPU-s charged (CPU-s, then the file's wall seconds)", file=sys.stderr)
        for name, (seconds, file_wall) in sorted(files.items(), key=lambda item: -item[1][0])[: arguments.top]:
            print(f"{seconds:8.1f} CPU-s {file_wall:7.1f} s  {name}", file=sys.stderr)
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
