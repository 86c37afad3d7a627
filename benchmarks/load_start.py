"""Load test on loopback: start requests from 20 concurrent clients, instant backends, the start
call inside the call (START_IN_BACKGROUND=false, the baseline) and in the background, one after
the other on the same Dagster.

    .venv/bin/python -m benchmarks.load_start [--requests 100] [--clients 20] [--deadline 2400]
                                              [--only baseline|background]

Starts one stack in a temporary folder and a gateway per mode (the baseline's first), completes
one request to warm it up, then for each
mode posts the requests, then polls every accepted workflow until it ends or the deadline passes
(so the next mode starts on an idle Dagster). Prints per mode accepted, completed, failed, lost
(still running or unknown at the deadline: must be 0) and the start call's median, p95 and p99,
then the ratios baseline / background. Bounded in count and time; it only talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.common import BODY, final_state, percentile, summary
from devtools.stack import Stack, free_port, temporary_stack

MODES = {"baseline": "false", "background": "true"}  # START_IN_BACKGROUND


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    refused: dict[int, int] = field(default_factory=dict)
    examples: dict[int, str] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)
    posted_seconds: float = 0.0
    total_seconds: float = 0.0


def _run(url: str, requests: int, clients: int, deadline: float, sweep: float) -> Outcome:
    outcome = Outcome()
    lock = threading.Lock()

    def client_loop(count: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for _ in range(count):
                start = time.perf_counter()
                response = http.post("/workflow/start", json=BODY)
                elapsed = time.perf_counter() - start
                with lock:
                    outcome.latencies.append(elapsed)
                    if response.status_code == 200:
                        outcome.accepted.append(response.json()["workflowId"])
                    else:
                        outcome.refused[response.status_code] = outcome.refused.get(response.status_code, 0) + 1
                        outcome.examples.setdefault(response.status_code, response.text[:300])

    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]
    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, per_client))
    outcome.posted_seconds = time.perf_counter() - began

    # A sweep every few seconds: polling every workflow back to back would itself be the load.
    until = time.monotonic() + deadline
    with httpx.Client(base_url=url, timeout=60) as http:
        pending = set(outcome.accepted)
        while pending and time.monotonic() < until:
            for workflow in list(pending):
                response = http.get(f"/workflow/{workflow}")
                state = response.json().get("status") if response.status_code == 200 else "UNKNOWN"
                if state in ("COMPLETED", "FAILED", "CANCELLED"):
                    outcome.ended[workflow] = state
                    pending.discard(workflow)
            if pending:
                time.sleep(sweep)
    outcome.total_seconds = time.perf_counter() - began
    return outcome


def _report(mode: str, outcome: Outcome, requests: int, clients: int) -> None:
    completed = sum(1 for s in outcome.ended.values() if s == "COMPLETED")
    failed = len(outcome.ended) - completed
    print(f"\n[{mode}] posted {requests} starts from {clients} clients in {outcome.posted_seconds:.1f} s")
    print(
        f"[{mode}] accepted={len(outcome.accepted)} refused={outcome.refused or 0} completed={completed} "
        f"failed={failed} lost={len(outcome.accepted) - len(outcome.ended)}"
    )
    print(f"[{mode}] {summary('start call', outcome.latencies)}")
    for code, text in outcome.examples.items():
        print(f"[{mode}]   e.g. {code}: {text}")
    rate = completed / outcome.total_seconds if outcome.total_seconds else 0.0
    print(f"[{mode}] all ended after {outcome.total_seconds:.1f} s ({rate:.2f} completed requests/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=2400.0, help="seconds to wait for completion, per mode")
    parser.add_argument("--sweep", type=float, default=5.0, help="seconds between status sweeps")
    parser.add_argument("--only", choices=sorted(MODES), action="append", help="measure only this mode")
    args = parser.parse_args()
    modes = [m for m in MODES if not args.only or m in args.only]
    env = {
        "LOCAL_BACKENDS": "instant",
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "REGENERATION_SENSOR_ENABLED": "false",
        "START_IN_BACKGROUND": MODES[modes[0]],
    }
    outcomes: dict[str, Outcome] = {}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as root, temporary_stack(Path(root), env) as stack:
        _warm_up(stack.gateway_url)  # the first mode must not pay for the first run (code location, workers)
        for index, mode in enumerate(modes):
            url = stack.gateway_url if index == 0 else _another_gateway(stack, mode)
            outcomes[mode] = _run(url, args.requests, args.clients, args.deadline, args.sweep)
            _report(mode, outcomes[mode], args.requests, args.clients)
            print(f"[{mode}] load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if len(outcomes) == 2:
        base, ours = outcomes["baseline"].latencies, outcomes["background"].latencies
        print("\nstart call, baseline / background:")
        for label, pick in (
            ("median", statistics.median),
            ("p95", lambda v: percentile(v, 95)),
            ("p99", lambda v: percentile(v, 99)),
        ):
            was, now = pick(base), pick(ours)
            print(f"  {label}: {was * 1000:.1f} ms / {now * 1000:.1f} ms = {was / now:.1f}x")
        p99 = percentile(ours, 99)
        print(f"target p99 <= 0.5 s: {'met' if p99 <= 0.5 else 'missed'} ({p99 * 1000:.1f} ms)")


def _warm_up(url: str) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:
        workflow = http.post("/workflow/start", json=BODY).json()["workflowId"]
        final_state(http, workflow, interval=0.5)


def _another_gateway(stack: Stack, mode: str) -> str:
    """A gateway of this mode on the same Dagster; the first mode's stops (its launches are done)."""
    stack.stop(("gateway",))
    return stack.start_gateway(name=f"gateway-{mode}", port=free_port(), env={"START_IN_BACKGROUND": MODES[mode]})


if __name__ == "__main__":
    main()
