"""Load test on loopback: 200 start requests from 20 concurrent clients, instant backends.

    .venv/bin/python -m benchmarks.load_start [--requests 200] [--clients 20] [--deadline 900]

Starts its own stack in a temporary folder, posts the requests, then polls every accepted
workflow until it ends or the deadline passes. Prints accepted, completed, failed, lost (still
running or unknown at the deadline: must be 0) and the start call's latency. Bounded in count
and time; it only talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from benchmarks.common import BODY, summary
from devtools.stack import temporary_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=2400.0, help="seconds to wait for completion")
    parser.add_argument("--sweep", type=float, default=5.0, help="seconds between status sweeps")
    args = parser.parse_args()
    env = {"LOCAL_BACKENDS": "instant", "RATE_LIMIT_PER_MINUTE": "1000000", "REGENERATION_SENSOR_ENABLED": "false"}
    with tempfile.TemporaryDirectory() as root, temporary_stack(Path(root), env) as stack:
        latencies: list[float] = []
        accepted: list[str] = []
        refused: dict[int, int] = {}
        examples: dict[int, str] = {}
        lock = threading.Lock()

        def client_loop(count: int) -> None:
            with httpx.Client(base_url=stack.gateway_url, timeout=60) as http:
                for _ in range(count):
                    start = time.perf_counter()
                    response = http.post("/workflow/start", json=BODY)
                    elapsed = time.perf_counter() - start
                    with lock:
                        latencies.append(elapsed)
                        if response.status_code == 200:
                            accepted.append(response.json()["workflowId"])
                        else:
                            refused[response.status_code] = refused.get(response.status_code, 0) + 1
                            examples.setdefault(response.status_code, response.text[:300])

        per_client = [args.requests // args.clients + (i < args.requests % args.clients) for i in range(args.clients)]
        began = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client_loop, per_client))
        posted = time.perf_counter() - began

        # A sweep every few seconds: polling 200 workflows back to back would itself be the load.
        outcome: dict[str, str] = {}
        last_seen: dict[str, str] = {}
        deadline = time.monotonic() + args.deadline
        with httpx.Client(base_url=stack.gateway_url, timeout=60) as http:
            pending = set(accepted)
            while pending and time.monotonic() < deadline:
                for workflow in list(pending):
                    response = http.get(f"/workflow/{workflow}")
                    state = response.json().get("status") if response.status_code == 200 else "UNKNOWN"
                    last_seen[workflow] = state
                    if state in ("COMPLETED", "FAILED", "CANCELLED"):
                        outcome[workflow] = state
                        pending.discard(workflow)
                time.sleep(args.sweep)
        total = time.perf_counter() - began

    completed = sum(1 for s in outcome.values() if s == "COMPLETED")
    failed = sum(1 for s in outcome.values() if s != "COMPLETED")
    print(f"posted {args.requests} starts from {args.clients} clients in {posted:.1f} s")
    print(
        f"accepted={len(accepted)} refused={refused or 0} completed={completed} failed={failed} "
        f"lost={len(accepted) - len(outcome)}"
    )
    print(summary("start call", latencies))
    for code, text in examples.items():
        print(f"  e.g. {code}: {text}")
    print(f"all ended after {total:.1f} s ({completed / total:.2f} completed requests/s)")


if __name__ == "__main__":
    main()
