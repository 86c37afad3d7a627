"""Target 4: a burst of 100 requests posted within 10 s, GPU pool of 2.

    .venv/bin/python -m benchmarks.burst [--requests 100] [--window 10] [--pool 2]
        [--designs default,celery-1x2,celery-2x1,celery-2x2]   # measured one after the other

Designs: `default` (the warm code server, 4 runs admitted, `gpu` steps wait for pool slots);
`celery-1x2` and `celery-2x1`, the scale-out queue design (Redis broker, workers x concurrency =
the GPU slots, so no step waits for a slot): one worker running 2 runs, or two workers running
one each (both on this machine, sharing its cores); `celery-2x2` admits twice the GPU slots, as
`default` does. With several designs a last table compares them with the GPU bound and with the
first one.

The reference model server answers with fixed latencies (SAM3 1.0 s, Flux 3.0 s, Gemini 2.0 s,
its vision replaced by trivial stand-ins so that one machine measures the "GPU time" and the
orchestration, not this server's CPU). The steps that call the model services share the `gpu`
pool: `segment_jewelry` (SAM3) and `generate_images` (Flux, then SAM3 again on the Flux image
for the fidelity metrics, beside Gemini), so the GPU bound on the total time is requests x
(SAM3 + max(Flux + SAM3, Gemini)) / pool, 5.0 s a request (stated as 4.0 s, without the second
SAM3 call, until 2026-12-05): the baseline this run is compared against. Every request must
complete (none lost, none stuck); target: total within 15% of the bound, and the peak memory of
all processes (PSS, so pages shared after a fork count once) <= 4 GB.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.common import BENCH_ENV, BODY, percentile
from devtools.reference_server import service_env
from devtools.stack import REPO_ROOT, Stack, descendants, free_port, parent_pid, temporary_stack, wait_for_http
from jewel_dagster.runtime.processes.forked_forkserver import FORKSERVER_NAME, RUN_WORKER_NAME

LATENCY = {"sam3/segment": 1.0, "a100/generate": 3.0, "gemini/generate-content": 2.0}
GPU_SECONDS = LATENCY["sam3/segment"] + max(
    LATENCY["a100/generate"] + LATENCY["sam3/segment"], LATENCY["gemini/generate-content"]
)


def _pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


ROLES = (
    ("-m gateway", "gateway"),
    ("dagster-webserver", "webserver"),
    ("dagster-daemon", "daemon"),
    ("runtime.processes.queue_daemon", "daemon"),
    ("watch_orphans", "orphan watchers"),
    ("forkserver", "code server forkserver"),
    ("api grpc", "code server"),
    ("celery", "celery worker"),
)


def _role(pid: int) -> str:
    """What a stack process is, from its command line; a process forked from one of the same
    command line (a run worker forked by the forkserver, a Celery pool child) is `... child`."""

    def cmdline(p: int) -> str:
        try:
            return Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    try:  # the forkserver the warm code server forks, and its run workers, are named, not told by argv
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        comm = ""
    if comm in (FORKSERVER_NAME, RUN_WORKER_NAME):
        return "code server forkserver" + (" child" if comm == RUN_WORKER_NAME else "")
    own = cmdline(pid)
    role = next((name for needle, name in ROLES if needle in own), "other")
    parent = parent_pid(pid)
    return f"{role} child" if role != "other" and parent and cmdline(parent) == own else role


def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class MemorySampler:
    """Samples the summed PSS of the stack's process trees (and ours) every half second, and the
    CPU time of every process in them (its last sample counts once it exited: a run worker that
    ends between two samples loses at most a sampling interval of CPU)."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.peak = 0
        self.peak_processes = 0
        self.cpu: dict[int, float] = {}
        self.roles: dict[int, str] = {}
        self.cpu_roots = roots
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.25):
            for pid in self.cpu_roots + descendants(self.cpu_roots):
                self.cpu[pid] = max(self.cpu.get(pid, 0.0), _cpu_seconds(pid))
                if pid not in self.roles:
                    self.roles[pid] = _role(pid)
            tick += 1
            if tick % 2:
                continue
            pids = self.roots + descendants(self.roots)
            total = sum(_pss_bytes(pid) for pid in pids)
            if total > self.peak:
                self.peak, self.peak_processes = total, len(pids)

    def cpu_since(self, before: dict[int, float]) -> float:
        return sum(seconds - before.get(pid, 0.0) for pid, seconds in self.cpu.items())

    def cpu_by_role(self, before: dict[int, float]) -> dict[str, float]:
        """CPU-seconds since `before`, summed by what each process is (`_role`), largest first."""
        spent: dict[str, float] = {}
        for pid, seconds in self.cpu.items():
            role = self.roles.get(pid, "other")
            spent[role] = spent.get(role, 0.0) + seconds - before.get(pid, 0.0)
        return dict(sorted(spent.items(), key=lambda item: -item[1]))


def burst(stack: Stack, requests: int, window: float) -> dict[str, object]:
    started_at = time.perf_counter()
    accepted: dict[int, str] = {}
    refused: Counter[str] = Counter()

    def post(index: int) -> None:
        time.sleep(max(0.0, started_at + index * window / requests - time.perf_counter()))
        with httpx.Client(base_url=stack.gateway_url, timeout=120) as client:
            response = client.post("/workflow/start", json=BODY)
        if response.status_code == 200:
            accepted[index] = response.json()["workflowId"]
        else:
            refused[f"{response.status_code}: {response.text[:100]}"] += 1

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(post, range(requests)))
    posted_in = time.perf_counter() - started_at

    finished: dict[str, tuple[str, float]] = {}
    deadline = time.monotonic() + 60 + 20 * requests * GPU_SECONDS  # generous: "stuck" means past this
    with httpx.Client(base_url=stack.gateway_url, timeout=60) as client:
        while len(finished) < len(accepted) and time.monotonic() < deadline:
            for workflow in accepted.values():
                if workflow in finished:
                    continue
                state = client.get(f"/workflow/{workflow}").json()
                if state["status"] != "RUNNING":
                    finished[workflow] = (state["status"], time.perf_counter() - started_at)
            time.sleep(0.5)
    statuses = Counter(status for status, _ in finished.values())
    return {
        "posted_in": posted_in,
        "accepted": len(accepted),
        "refused": refused,
        "statuses": statuses,
        "stuck": len(accepted) - len(finished),
        "total": max((t for _, t in finished.values()), default=float("nan")),
        "done_at": sorted(t for _, t in finished.values()),
    }


DESIGNS = {
    # Today's embedded default: the warm code server, the queue admits 4 runs, `gpu` steps wait
    # for the pool's slots (sleeping between checks since runtime/executor/claim_sleep.py).
    "default": {},
    # The scale-out queue design: workers x concurrency = GPU slots, so no step waits for a slot.
    "celery-1x2": {"CELERY_WORKERS": "1", "CELERY_CONCURRENCY": "2"},
    "celery-2x1": {"CELERY_WORKERS": "2", "CELERY_CONCURRENCY": "1"},
    # Twice the GPU slots, as the default admits: two runs wait for a slot (sleeping) while two
    # hold one, so a run's CPU steps overlap another's GPU steps.
    "celery-2x2": {"CELERY_WORKERS": "2", "CELERY_CONCURRENCY": "2"},
}


def measure(design: str, base_env: dict[str, str], args: argparse.Namespace) -> dict[str, object]:
    """One design's burst on a fresh stack: the burst's figures, CPU of the stack and peak PSS."""
    env = dict(base_env)
    if design.startswith("celery"):
        env |= {
            "RUN_LAUNCHER": "celery",
            **DESIGNS[design],
            "CELERY_BROKER_URL": os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/5"),
            "CELERY_RESULT_BACKEND": os.environ.get("BENCH_CELERY_BACKEND", "redis://127.0.0.1:6379/6"),
            "CELERY_QUEUE": f"burst-{os.getpid()}-{design}",
        }
    with tempfile.TemporaryDirectory() as root, temporary_stack(Path(root), env) as stack:
        with httpx.Client(base_url=stack.gateway_url, timeout=60) as client:  # warm-up, not counted
            warm = client.post("/workflow/start", json=BODY).json()["workflowId"]
            while client.get(f"/workflow/{warm}").json()["status"] == "RUNNING":
                time.sleep(0.5)
        roots = [p.pid for p in stack.processes.values()] + [os.getpid()]
        with MemorySampler(roots) as memory:
            # CPU of the stack only: not the reference server (the "GPU") nor this load generator.
            memory.cpu_roots = [p.pid for p in stack.processes.values()]
            time.sleep(0.6)
            before = dict(memory.cpu)
            result = burst(stack, args.requests, args.window)
            time.sleep(0.6)
            result["cpu"] = memory.cpu_since(before)
            result["cpu_by_role"] = memory.cpu_by_role(before)
        result["peak"], result["peak_processes"] = memory.peak, memory.peak_processes
    return result


def report(design: str, result: dict[str, object], args: argparse.Namespace) -> None:
    bound = args.requests * GPU_SECONDS / args.pool
    total = float(result["total"])  # type: ignore[arg-type]
    done_at: list[float] = result["done_at"]  # type: ignore[assignment]
    cpu = float(result["cpu"])  # type: ignore[arg-type]
    peak = int(result["peak"])  # type: ignore[call-overload]
    print(f"== {design}")
    print(
        f"posted {args.requests} requests in {result['posted_in']:.1f} s: accepted {result['accepted']}, "
        f"refused {dict(result['refused'])}"  # type: ignore[call-overload]
    )
    print(f"ended: {dict(result['statuses'])}, stuck (not ended in time): {result['stuck']}")  # type: ignore[call-overload]
    if done_at:
        print(
            f"time to end per request: median {statistics.median(done_at):.1f} s, "
            f"p95 {percentile(done_at, 95):.1f} s, last {total:.1f} s"
        )
    print(
        f"total {total:.1f} s vs GPU bound {bound:.1f} s ({args.requests} x {GPU_SECONDS:.1f} s / pool {args.pool}): "
        f"ratio {total / bound:.2f}; target <= 1.15: {'meets' if total <= 1.15 * bound else 'MISSES'}"
    )
    print(
        f"peak memory of all processes (PSS): {peak / 2**30:.2f} GB over {result['peak_processes']} processes; "
        f"target <= 4 GB: {'meets' if peak <= 4 * 2**30 else 'MISSES'}"
    )
    accepted = max(1, int(result["accepted"]))  # type: ignore[call-overload]
    print(f"CPU of the stack's processes: {cpu:.0f} s, {cpu / accepted:.2f} CPU-seconds per accepted request")
    by_role: dict[str, float] = result["cpu_by_role"]  # type: ignore[assignment]
    print(
        "  per request, by process: "
        + ", ".join(f"{role} {seconds / accepted:.2f}" for role, seconds in by_role.items())
    )
    statuses: Counter[str] = result["statuses"]  # type: ignore[assignment]
    everyone = result["stuck"] == 0 and result["accepted"] == args.requests and set(statuses) == {"COMPLETED"}
    print(f"every request completed: {'yes' if everyone else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--window", type=float, default=10.0, help="seconds over which the requests are posted")
    parser.add_argument("--pool", type=int, default=2, help="GPU pool size")
    parser.add_argument(
        "--designs",
        default="default",
        help=f"comma-separated, measured one after the other in this process: {', '.join(DESIGNS)}",
    )
    args = parser.parse_args()
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    if unknown := [d for d in designs if d not in DESIGNS]:
        parser.error(f"unknown design(s) {unknown}; choose from {list(DESIGNS)}")
    port = free_port()
    latency_args = [a for endpoint, s in LATENCY.items() for a in ("--latency", f"{endpoint}={s}")]
    server = subprocess.Popen(
        [sys.executable, "-m", "devtools.reference_server", "--port", str(port), "--instant", *latency_args],
        cwd=REPO_ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    env = {
        **service_env(base),
        "GEMINI_API_KEY": "reference-server",
        "GEMINI_BASE_URL": f"{base}/gemini",
        "GPU_POOL_SIZE": str(args.pool),
        **BENCH_ENV,
    }
    results: dict[str, dict[str, object]] = {}
    try:
        wait_for_http(f"{base}/sam3/health", 60, server)
        for design in designs:
            results[design] = measure(design, env, args)
            report(design, results[design], args)
    finally:
        server.terminate()
        server.wait(timeout=10)
    if len(results) > 1:
        first = designs[0]
        bound = args.requests * GPU_SECONDS / args.pool
        print(f"\n{'design':<12} {'total s':>8} {'x bound':>8} {'x ' + first:>12} {'CPU-s/req':>10} {'peak GB':>8}")
        for design, result in results.items():
            total, cpu = float(result["total"]), float(result["cpu"])  # type: ignore[arg-type]
            accepted = max(1, int(result["accepted"]))  # type: ignore[call-overload]
            print(
                f"{design:<12} {total:>8.1f} {total / bound:>8.2f} {total / float(results[first]['total']):>12.2f} "  # type: ignore[arg-type]
                f"{cpu / accepted:>10.2f} {int(result['peak']) / 2**30:>8.2f}"  # type: ignore[call-overload]
            )


if __name__ == "__main__":
    main()
