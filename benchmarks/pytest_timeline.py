"""A pytest plugin for `benchmarks.process_cpu --by-test-file`: each test's start and length, per
xdist worker, so the CPU of a worker's processes can be charged to the test file it ran then.

    PYTEST_ADDOPTS="-p benchmarks.pytest_timeline" TEST_TIMELINE_DIR=/tmp/t make test

Without TEST_TIMELINE_DIR it records nothing. Each worker writes `<worker id>.jsonl` there: one
line for its collection (`"collection"`), then one per test (node id, start on the monotonic
clock, which /proc's readings share, wall seconds, and the worker's own CPU-seconds), each with
the worker's pid, which is what the sampler finds as the ancestor of a stack's processes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

TIMELINE_DIR_ENV = "TEST_TIMELINE_DIR"


def _record(entry: dict[str, Any]) -> None:
    folder = os.environ.get(TIMELINE_DIR_ENV)
    if not folder:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(Path(folder) / f"{worker}.jsonl", "a") as timeline:
        timeline.write(json.dumps({"pid": os.getpid(), **entry}) + "\n")


def pytest_collection_finish(session: pytest.Session) -> None:
    """The worker's CPU up to here is its start and collection (every worker imports every file)."""
    _record({"id": "collection", "start": 0.0, "wall": time.monotonic(), "cpu": time.process_time()})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    started, cpu = time.monotonic(), time.process_time()
    try:
        return (yield)
    finally:
        wall = time.monotonic() - started
        _record({"id": item.nodeid, "start": started, "wall": wall, "cpu": time.process_time() - cpu})
