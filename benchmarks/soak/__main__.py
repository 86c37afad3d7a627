"""The chaos soak (issue 32): mixed traffic from simulated clients while processes die.

    .venv/bin/python -m benchmarks.soak --minutes 3 --chaos-every 20 --json .data/soak.json
    make soak MINUTES=60

Starts the scale-out stack of its own (stack.py), runs the traffic (traffic.py) and the faults
(chaos.py) for --minutes, stops the traffic, lets the system settle, checks the invariants
(invariants.py) and prints the table (report.py). Exits 1 on any invariant violation.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from dagster import DagsterInstance

from benchmarks.soak import report
from benchmarks.soak.chaos import KINDS, Chaos
from benchmarks.soak.invariants import Checks, GpuSampler, settle
from benchmarks.soak.stack import soak_stack
from benchmarks.soak.traffic import Traffic

# After the last fault: how long every request may take to end. README's single-fault bounds are
# seconds to ~90 s on a loaded machine; the queue left by 20 clients adds its own drain time.
SETTLE_SECONDS = 600.0


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--chaos-every", type=float, default=60.0, help="seconds between faults")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--failure-rate", type=float, default=0.02, help="share of model calls answered 503")
    # Not README's 30 ms (benchmarks.status, a quiet machine): a bound that catches a gateway whose
    # GETs wedge (Dagster's 30 s timeout) on a loaded 2-core CI machine; 2.37 s was measured at load 27-42.
    parser.add_argument("--get-p99", type=float, default=5.0, help="bound on GET's p99 (seconds)")
    parser.add_argument("--faults", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--json", type=Path, default=Path(".data/soak.json"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) afterwards")
    return parser.parse_args(argv)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    # SIGTERM (a CI timeout, Ctrl-C's cousin) unwinds like an exception: every process stops.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"soak: signal {signum}"))
    kinds = tuple(k for k in args.faults.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"unknown faults {sorted(unknown)}; known: {', '.join(KINDS)}")
    root = Path(tempfile.mkdtemp(prefix="jewel-soak-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user below it
    print(f"soak: {args.minutes} min, a fault every {args.chaos_every:.0f} s, seed {args.seed}, in {root}", flush=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    loads: list[float] = []
    try:
        with soak_stack(root / "s", args.failure_rate, args.seed) as soak:
            os.environ.update(soak.stack.env)  # dagster.yaml's variables, for the instance below
            instance = DagsterInstance.from_config(soak.dagster_home)
            sampler = GpuSampler(instance)
            traffic = Traffic(soak, args.clients, args.seed)
            chaos = Chaos(soak, args.chaos_every, args.seed, kinds)
            sampler.start()
            traffic.start()
            chaos.start()
            ends = time.monotonic() + args.minutes * 60
            while time.monotonic() < ends:
                loads.append(os.getloadavg()[0])
                time.sleep(min(10.0, max(0.0, ends - time.monotonic())))
            print("soak: stopping the chaos and the traffic", flush=True)
            chaos.stop()
            traffic.stop()
            chaos.restart_crashed()  # so that what is left can settle
            print(f"soak: settling {len(traffic.record.requests)} requests", flush=True)
            settled_from = time.monotonic()
            last = settle(soak, traffic.record, SETTLE_SECONDS)
            print(f"soak: settled in {time.monotonic() - settled_from:.0f} s; checking", flush=True)
            checks = Checks(soak, traffic.record, chaos, instance)
            checks.final_states(last)
            checks.cancelled_never_completed(last)
            runs = checks.one_run_per_key()
            checks.webhooks(runs, timeout=120)
            print("soak: webhooks checked", flush=True)
            left = checks.nothing_left(sampler, timeout=60)
            sampler.stop()
            extra = {
                "settle seconds": time.monotonic() - settled_from,
                "get latency": checks.get_latency(args.get_p99),
                "gpu pool": {
                    "samples": sampler.samples,
                    "failed": sampler.failed,
                    "most": sampler.most,
                    "limit": sampler.limit,
                    "left": left,
                },  # fmt: skip
                "load": {
                    "min": min(loads, default=0),
                    "median": sorted(loads)[len(loads) // 2] if loads else 0,
                    "max": max(loads, default=0),
                },  # fmt: skip
                "soak cpu seconds": _cpu_seconds(),
                "webhooks received": len(soak.receiver.posts()),
            }
            result = report.build(config, last, traffic.record, chaos.faults, extra)
            threading.Thread(target=instance.dispose, daemon=True).start()
    finally:
        print(f"soak: logs under {root / 's' / 'stack' / 'logs'}", flush=True)
    if result["violation count"] == 0 and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    report.write(result, args.json)
    print(report.table(result))
    print(f"soak: JSON in {args.json}", flush=True)
    return 1 if result["violation count"] else 0


if __name__ == "__main__":
    sys.exit(main())
