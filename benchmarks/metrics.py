"""Issue 20: what observability costs.

    .venv/bin/python -m benchmarks.metrics [--calls 2000] [--runs 300]

- a GET through the gateway app (TestClient, a route that answers at once) with the
  observability middleware (correlation id, metrics, one JSON log line a call) against the same
  app without it;
- a refresh of the figures read from Dagster (`DagsterFigures`, what a scrape costs once
  `METRICS_CACHE_SECONDS` passed) on a SQLite instance holding `--runs` finished runs and a
  batch of 20 runs ended since the last refresh, against the 18 run counts alone.

Prints median and p95 of each, and ratio = ours / baseline.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

from benchmarks.common import percentile


def _timed(call: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def _line(label: str, seconds: list[float], baseline: list[float] | None = None) -> str:
    median = statistics.median(seconds)
    text = f"{label}: median {median * 1000:.3f} ms, p95 {percentile(seconds, 95) * 1000:.3f} ms"
    if baseline:
        text += f", ratio {median / statistics.median(baseline):.2f}x"
    return text


def middleware(calls: int) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from gateway.observability.logs import configure_logging
    from gateway.observability.middleware import ObservabilityMiddleware
    from gateway.observability.registry import GatewayMetrics

    def app(observed: bool) -> FastAPI:
        built = FastAPI()

        @built.get("/workflow/{workflow_id}")
        def read(workflow_id: str) -> dict[str, str]:
            return {"workflowId": workflow_id}

        if observed:
            built.add_middleware(ObservabilityMiddleware, metrics=GatewayMetrics())
        return built

    configure_logging("json", "INFO")
    logging.getLogger("gateway").handlers[0].setStream(open(os.devnull, "w"))  # noqa: SIM115
    results = {}
    for observed in (False, True, False, True):  # interleaved: the machine's load hits both alike
        with TestClient(app(observed)) as client:
            results.setdefault(observed, []).extend(
                _timed(lambda c=client: c.get("/workflow/jewelry-gen-1"), calls // 2)
            )
    print(_line("GET without the middleware", results[False]))
    print(_line("GET with the middleware (id, metrics, JSON line)", results[True], results[False]))


def figures(runs: int) -> None:
    import dagster as dg
    from dagster import RunsFilter

    from gateway.observability.dagster_figures import JOBS, DagsterFigures

    @dg.asset(name="jewelry_mask")
    def mask() -> int:
        return 1

    job = dg.define_asset_job(JOBS[0], selection=[mask], executor_def=dg.in_process_executor)
    resolved = dg.Definitions(assets=[mask], jobs=[job]).resolve_job_def(JOBS[0])
    with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
        for _ in range(runs):
            resolved.execute_in_process(instance=instance)
        figures = DagsterFigures(ttl=0.0, instance_factory=lambda: instance)
        list(figures.collect())  # the cursors start here
        refreshes = []
        for _ in range(5):
            for _ in range(20):
                resolved.execute_in_process(instance=instance)
            start = time.perf_counter()
            list(figures.collect())
            refreshes.append(time.perf_counter() - start)
        quiet = _timed(lambda: list(figures.collect()), 20)  # nothing ended since the last one

        def counts() -> None:
            for _ in range(18):
                instance.get_runs_count(RunsFilter(job_name=JOBS[0]))

        baseline = _timed(counts, 20)
    print(_line("18 run counts alone", baseline))
    print(_line(f"refresh, {runs} runs stored, nothing new", quiet, baseline))
    print(_line(f"refresh, {runs} runs stored, 20 runs ended since the last", refreshes, baseline))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.getLogger("dagster").setLevel(logging.ERROR)
    middleware(args.calls)
    figures(args.runs)


if __name__ == "__main__":
    main()
