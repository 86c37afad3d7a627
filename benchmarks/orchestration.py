"""Target 1: orchestration overhead, POST /workflow/start until GET first shows COMPLETED.

    .venv/bin/python -m benchmarks.orchestration [--requests 20]

Instant local backends, so what is timed is Dagster and the gateway. Runs the same sequential
requests against two stacks started here, one after the other:
- stock: Dagster's default queue settings (polled every 5 s) and its default multiprocess
  executor (a process per step);
- ours: the project's dagster.yaml (queue polled every 1 s, threads) and the in-process executor.
Prints median/p95 of each and the ratio stock / ours. Target for ours: p50 <= 0.5 s, p95 <= 1.0 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import BODY, percentile
from gateway.stack import temporary_stack

COMMON = {"LOCAL_BACKENDS": "instant", "REGENERATION_SENSOR_ENABLED": "false", "RATE_LIMIT_PER_MINUTE": "100000"}
SETUPS = {
    "stock": {**COMMON, "DAGSTER_STOCK_SETTINGS": "true", "JOB_EXECUTOR": "multiprocess"},
    "ours": COMMON,
}


def measure(env: dict[str, str], requests: int) -> list[float]:
    with tempfile.TemporaryDirectory() as root, temporary_stack(Path(root), env) as stack:
        with httpx.Client(base_url=stack.gateway_url, timeout=60) as client:
            client.post("/workflow/start", json=BODY)  # warm-up: code servers load lazily
            time.sleep(1)
            samples = []
            for _ in range(requests):
                start = time.perf_counter()
                workflow = client.post("/workflow/start", json=BODY).json()["workflowId"]
                while True:
                    state = client.get(f"/workflow/{workflow}").json()
                    if state["status"] != "RUNNING":
                        break
                    time.sleep(0.02)
                if state["status"] != "COMPLETED":
                    raise RuntimeError(f"request ended {state['status']}: {state.get('error')}")
                samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    results = {name: measure(env, args.requests) for name, env in SETUPS.items()}
    for name, samples in results.items():
        print(
            f"{name}: n={len(samples)} median={statistics.median(samples):.2f} s p95={percentile(samples, 95):.2f} s "
            f"min={min(samples):.2f} s"
        )
    ratio = statistics.median(results["stock"]) / statistics.median(results["ours"])
    ours = results["ours"]
    verdict = "meets" if statistics.median(ours) <= 0.5 and percentile(ours, 95) <= 1.0 else "MISSES"
    print(f"ratio stock/ours (median): {ratio:.1f}x; target p50 <= 0.5 s, p95 <= 1.0 s: {verdict}")


if __name__ == "__main__":
    main()
