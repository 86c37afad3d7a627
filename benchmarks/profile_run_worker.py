"""Where a run worker spends its CPU: a py-spy profile of the run workers of a few requests.

    .venv/bin/pip install py-spy
    .venv/bin/python -m benchmarks.profile_run_worker [--requests 5] [--out profile.txt] [--env K=V ...]

Starts a stack with instant backends (so the profile shows orchestration, IO and encoding, not
the local stand-ins' vision), warms it up with one request, then records the warm code server
and the run workers it forks (`py-spy record --subprocesses`) while the requests run one after
the other. Prints the top functions by self time (samples where the function itself was on
CPU) over the run workers only, and the same by inclusive time. `--raw FILE` keeps py-spy's
collapsed stacks, `--analyse FILE` reports on kept ones without running anything.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import BENCH_ENV, BODY, final_state
from devtools.stack import BIN, temporary_stack

ENV = {"LOCAL_BACKENDS": "instant", **BENCH_ENV}


def record(env: dict[str, str], requests: int, raw: Path, rate: int) -> None:
    """Run the requests under py-spy, which writes its collapsed stacks to `raw`."""
    py_spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    with tempfile.TemporaryDirectory() as root, temporary_stack(Path(root), env) as stack:
        server_pid = stack.processes["code_server"].pid
        with httpx.Client(base_url=stack.gateway_url, timeout=60) as client:
            final_state(client, client.post("/workflow/start", json=BODY).json()["workflowId"])  # warm-up
            spy = subprocess.Popen(
                [py_spy, "record", "--subprocesses", "--pid", str(server_pid), "--rate", str(rate),
                 "--format", "raw", "--output", str(raw), "--nonblocking"]
            )  # fmt: skip
            time.sleep(1.0)  # py-spy attaches before the first request
            for _ in range(requests):
                state = final_state(client, client.post("/workflow/start", json=BODY).json()["workflowId"])
                if state["status"] != "COMPLETED":
                    raise RuntimeError(f"request ended {state['status']}: {state.get('error')}")
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)


def top(raw: Path, limit: int) -> str:
    """Self and inclusive sample counts per function in the run workers (the forked processes
    whose stacks run Dagster's `start_run_in_subprocess`)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not count_text.isdigit() or not any(f.startswith("start_run_in_subprocess") for f in frames):
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    lines = [f"run workers: {total} samples"]
    for title, counter in (("by self time", own), ("by inclusive time", inclusive)):
        lines.append(f"\ntop {limit} {title} (share of the run workers' samples):")
        lines += [f"{n / max(total, 1) * 100:6.1f}%  {name}" for name, n in counter.most_common(limit)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--rate", type=int, default=50, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, help="also write the report here")
    parser.add_argument("--env", action="append", default=[], help="K=V added to the stack's environment")
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    parser.add_argument("--analyse", type=Path, help="only report on collapsed stacks kept earlier")
    args = parser.parse_args()
    env = {**ENV, **dict(item.split("=", 1) for item in args.env)}
    if args.analyse:
        print(top(args.analyse, args.top))
        return
    with tempfile.TemporaryDirectory() as folder:
        raw = args.raw or Path(folder) / "profile.txt"
        record(env, args.requests, raw, args.rate)
        report = top(raw, args.top)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
