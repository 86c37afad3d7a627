"""The warm code server's forkserver forked at its start against spawned at the first run.

    .venv/bin/python -m benchmarks.forkserver_start [--repeats 5]

Each sample is a stack started cold (`devtools.stack.temporary_stack`, what `make run` does) with
the instant stand-ins, `FORKSERVER_START=fork` (the default: processes/forked_forkserver.py) or
`spawn` (multiprocessing's own forkserver, a fresh interpreter that imports the preloads when the
first run needs a worker), alternated in one run. Measured: the stack's start (up to the gateway's
/health with the code location loaded), then its first request from start to COMPLETED, and the
CPU of the stack's processes and their children (user + system, from /proc) once it completed.
Prints median and p95 of each, and ratio = spawn median / fork median.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import BENCH_ENV, BODY, final_state, percentile
from benchmarks.stack_start import stack_cpu_seconds
from devtools.stack import temporary_stack

MODES = ("fork", "spawn")
FIGURES = ("start s", "first request s", "CPU-s")


def _sample(root: Path, mode: str) -> dict[str, float]:
    env = {"LOCAL_BACKENDS": "instant", **BENCH_ENV, "FORKSERVER_START": mode}
    began = time.monotonic()
    with temporary_stack(root, env) as stack:
        started = time.monotonic()
        with httpx.Client(base_url=stack.gateway_url, timeout=60) as client:
            response = client.post("/workflow/start", json=BODY)
            response.raise_for_status()
            state = final_state(client, response.json()["workflowId"])
        finished = time.monotonic()
        if state["status"] != "COMPLETED":
            raise RuntimeError(f"the first request ended {state['status']}")
        cpu = stack_cpu_seconds(stack)
    return {"start s": started - began, "first request s": finished - started, "CPU-s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {mode: {figure: [] for figure in FIGURES} for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="forkserver-start-") as folder:
        for index in range(args.repeats):
            for mode in MODES if index % 2 == 0 else reversed(MODES):
                sample = _sample(Path(folder) / f"{mode}-{index}", mode)
                for figure, value in sample.items():
                    results[mode][figure].append(value)
                print(f"  {mode} #{index}: " + ", ".join(f"{figure} {value:.2f}" for figure, value in sample.items()))
    for mode in MODES:
        print(
            f"{mode}: "
            + "; ".join(
                f"{figure} median {statistics.median(values):.2f}, p95 {percentile(values, 95):.2f}"
                for figure, values in results[mode].items()
            )
        )
    for figure in FIGURES:
        ratio = statistics.median(results["spawn"][figure]) / statistics.median(results["fork"][figure])
        print(f"ratio spawn / fork ({figure}): {ratio:.2f}x")


if __name__ == "__main__":
    main()
