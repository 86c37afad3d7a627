"""`benchmarks.process_cpu --by-test-file` charges a stack's CPU to the test file that started it:
through the line of parents up to the xdist worker, then by the time of the sample."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.process_cpu import ProcessReading, WorkerSamples, _by_test_file, _charge

WORKER = "python -c import sys;exec(eval(sys.stdin.readline()))"


def _sample(cpu: dict[int, float]) -> dict[tuple[int, int], ProcessReading]:
    """A worker (10), its stack's daemon (11), the daemon's run worker (12), and an orphan (13)."""
    kinds = {10: (WORKER, 1), 11: ("dagster-daemon", 10), 12: ("run_worker", 11), 13: ("run_worker", 1)}
    return {(pid, 0): ProcessReading(kinds[pid][0], seconds, kinds[pid][1]) for pid, seconds in cpu.items()}


def test_a_workers_descendants_are_charged_to_the_file_it_ran_then(tmp_path: Path) -> None:
    previous: dict[tuple[int, int], float] = {}
    workers: dict[int, WorkerSamples] = {}
    _charge(previous, _sample({10: 2.0, 11: 0.0, 12: 0.0, 13: 0.0}), 50.0, workers)  # collecting
    _charge(previous, _sample({10: 2.5, 11: 1.0, 12: 3.0, 13: 4.0}), 100.0, workers)  # during a.py
    _charge(previous, _sample({10: 2.5, 11: 1.5, 12: 3.0, 13: 9.0}), 105.0, workers)  # during b.py
    tests = [("tests/a.py::test_one", 99.0, 5.0), ("tests/b.py::test_two", 104.0, 2.0)]
    (tmp_path / "gw0.jsonl").write_text(
        json.dumps({"pid": 10, "id": "collection", "start": 0.0, "wall": 60.0, "cpu": 2.0})
        + "".join(f"\n{json.dumps({'pid': 10, 'id': i, 'start': s, 'wall': w, 'cpu': 0.1})}" for i, s, w in tests)
    )
    files = _by_test_file(tmp_path, workers)
    assert files == {
        "(a worker's start and collection)": (2.0, 0.0),
        "tests/a.py": (0.5 + 1.0 + 3.0, 5.0),
        "tests/b.py": (0.5, 2.0),
    }  # the orphan (13), whose parent is init, is charged to no file
