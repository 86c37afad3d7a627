"""What idle event streams cost everyone else: GET /workflow/{id} latency with N open SSE streams vs none.

    .venv/bin/python -m benchmarks.event_streams [--streams 1000] [--seconds 10] [--runs 10]

Starts the reference model server (generation held for 10 minutes, so the runs stay in flight
and their streams stay open and idle) and a stack on 127.0.0.1 pointing at it, launches `--runs`
requests and waits until each is generating. Then, for `--seconds` each:
- no streams: `--pollers` clients GET a workflow every `--interval` s (a frontend's polling);
- the same pollers while `--streams` event streams are open on those workflows (spread over
  them; each has had its first event, so it is idle from then on).
Prints median and p99 of each and their ratio. Everything runs on loopback and ends within
about `2 x --seconds` plus the stack's start (bounded by `--budget`).

Measured (2 cores shared with other test runs; `--runs 3 --seconds 8`, 10 pollers every 0.1 s):
- one poll per stream (before): none median 8.4 ms p99 57 ms; 1,000 streams median 55 ms
  p99 1,151 ms, and the pollers got half their answers (47/s of 96/s): 6.6x median, 20x p99;
- one shared watcher per workflow: none median 9.7 ms p99 55 ms; 1,000 streams median 10.9 ms
  p99 74 ms: 1.12x median, 1.36x p99.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import BENCH_ENV, BODY, percentile
from benchmarks.status import poll_all
from devtools.reference_server import service_env
from devtools.stack import REPO_ROOT, free_port, temporary_stack, wait_for_http


async def _listen(client: httpx.AsyncClient, url: str, ready: asyncio.Event, refused: list[int]) -> None:
    """One stream: wait for its first event, then stay open (idle) until cancelled."""
    async with client.stream("GET", url) as response:
        if response.status_code != 200:
            refused.append(response.status_code)
            ready.set()
            return
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                ready.set()


async def with_streams(
    base: str, ids: list[str], streams: int, pollers: int, seconds: float, interval: float, budget: float
) -> tuple[list[float], list[int], float]:
    """GET latencies while `streams` idle streams are open; also the refused streams and the time to open them."""
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=0)
    timeout = httpx.Timeout(30.0, read=None)
    refused: list[int] = []
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        ready = [asyncio.Event() for _ in range(streams)]
        opened = time.monotonic()
        tasks = [
            asyncio.create_task(_listen(client, f"{base}/workflow/{ids[i % len(ids)]}/events", ready[i], refused))
            for i in range(streams)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), timeout=budget)
            open_seconds = time.monotonic() - opened
            gets = [(f"{base}/workflow/{w}", None) for w in ids]
            latencies = await poll_all(gets, pollers, seconds, interval)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return latencies, refused, open_seconds


def _line(label: str, samples: list[float], seconds: float) -> str:
    return (
        f"{label}: n={len(samples)} ({len(samples) / seconds:.0f}/s) median={statistics.median(samples) * 1000:.1f} ms "
        f"p99={percentile(samples, 99) * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pollers", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.1, help="each poller's GET interval")
    parser.add_argument("--budget", type=float, default=120.0, help="most seconds to wait for runs or streams")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "devtools.reference_server", "--port", str(port), "--latency", "a100/generate=600"],
        cwd=REPO_ROOT,
    )
    ref = f"http://127.0.0.1:{port}"
    env = {
        **service_env(ref),
        **BENCH_ENV,
        "GPU_POOL_SIZE": "100",
        "EVENT_STREAMS_PER_CALLER": str(args.streams),  # one client opens them all
        "EVENT_STREAMS_TOTAL": str(args.streams),
    }
    try:
        wait_for_http(f"{ref}/sam3/health", 60, server)
        with tempfile.TemporaryDirectory() as root, temporary_stack(Path(root), env) as stack:
            with httpx.Client(base_url=stack.gateway_url, timeout=60) as client:
                ids = [client.post("/workflow/start", json=BODY).json()["workflowId"] for _ in range(args.runs)]
                deadline = time.monotonic() + args.budget
                while time.monotonic() < deadline:  # wait until every run is held in its generation step
                    states = [client.get(f"/workflow/{w}").json() for w in ids]
                    if all(s.get("currentStep") == "GENERATING_IMAGES" for s in states):
                        break
                    time.sleep(0.5)
                else:
                    raise TimeoutError("the runs did not reach GENERATING_IMAGES")
            gets = [(f"{stack.gateway_url}/workflow/{w}", None) for w in ids]
            idle = asyncio.run(poll_all(gets, args.pollers, args.seconds, args.interval))
            busy, refused, open_seconds = asyncio.run(
                with_streams(
                    stack.gateway_url, ids, args.streams, args.pollers, args.seconds, args.interval, args.budget
                )
            )
    finally:
        server.terminate()
        try:
            server.wait(timeout=3)  # a held generation keeps uvicorn's graceful shutdown waiting
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    print(f"{args.pollers} pollers each GET every {args.interval:g} s, {args.runs} runs in flight, {args.seconds:g} s:")
    print(_line("  no event streams", idle, args.seconds))
    print(_line(f"  {args.streams} idle event streams", busy, args.seconds))
    print(f"  streams opened in {open_seconds:.1f} s; refused: {len(refused)} {sorted(set(refused)) or ''}")
    print(
        f"  ratio with/without streams: median {statistics.median(busy) / statistics.median(idle):.2f}x, "
        f"p99 {percentile(busy, 99) / percentile(idle, 99):.2f}x"
    )


if __name__ == "__main__":
    main()
