"""Target 3: GET /workflow/{id} latency with 100 concurrent pollers while runs are in flight.

    .venv/bin/python -m benchmarks.status [--pollers 100] [--seconds 20] [--runs 10]

Starts the reference model server (generation held for `--hold` seconds, so runs stay in flight
for the whole measurement: a run that ended would be measured as a COMPLETED GET) and a stack
pointing at it, launches `--runs` requests, then polls them for `--seconds` each way:
- wrk (Debian's `wrk`, when installed) with `--pollers` connections back to back;
- `--pollers` asyncio clients back to back, and again each polling every `--interval` seconds
  as a frontend does (the seed's polls every 2 s).
The baseline, in the same run: the same asyncio pollers asking Dagster's GraphQL directly for
the run's status and step stats (the stock way to read a run). Target: p50 <= 5 ms, p99 <= 30 ms.
Back to back, latency is bounded below by pollers / throughput (Little's law): 100 connections
at 5 ms would need 20,000 answers a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import BENCH_ENV, BODY, WrkRun, percentile, run_wrk
from devtools.reference_server import service_env
from devtools.stack import REPO_ROOT, free_port, temporary_stack, wait_for_http

_QUERY = """
query LatestRun($tag: String!) {
  runsOrError(filter: {tags: [{key: "dagster/partition", value: $tag}]}, limit: 1) {
    ... on Runs { results { runId status stepStats { stepKey status startTime } } }
  }
}"""


async def poll_all(
    url_for: list[tuple[str, dict | None]], pollers: int, seconds: float, interval: float = 0.0
) -> list[float]:
    """`pollers` clients asking back to back (interval 0) or each every `interval` seconds."""
    latencies: list[float] = []
    errors: list[float] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=pollers, max_keepalive_connections=pollers)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def poller(index: int) -> None:
            url, body = url_for[index % len(url_for)]
            if interval:
                await asyncio.sleep(interval * index / pollers)  # spread the pollers over the interval
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    response = await (client.post(url, json=body) if body else client.get(url))
                except httpx.TransportError:  # an overloaded server dropped the connection: counted
                    errors.append(time.perf_counter() - start)
                    continue
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
                if interval:
                    await asyncio.sleep(max(0.0, interval - (time.perf_counter() - start)))

        await asyncio.gather(*(poller(i) for i in range(pollers)))
    if errors:
        print(f"  ({len(errors)} connections dropped by {url_for[0][0]})", flush=True)
    return latencies


_WRK_SCRIPT = """
ids = {%s}
n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/workflow/" .. ids[n %% #ids + 1])
end
"""


_POST_SCRIPT = """
bodies = {%s}
n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/graphql", {["Content-Type"] = "application/json"}, bodies[n %% #bodies + 1])
end
"""


def wrk(base_url: str, ids: list[str], connections: int, seconds: float, gateway_pid: int) -> WrkRun | None:
    """wrk with `connections` connections back to back over the ids; None when wrk is not installed."""
    if shutil.which("wrk") is None:
        return None
    return run_wrk(base_url, _WRK_SCRIPT % ", ".join(f'"{w}"' for w in ids), connections, seconds, gateway_pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--wrk-only", action="store_true", help="wrk only: the gateway, then GraphQL's run query as the baseline"
    )
    parser.add_argument("--hold", type=float, default=600.0, help="seconds each generation is held")
    parser.add_argument(
        "--interval", type=float, default=0.5, help="the paced pollers' interval (the seed's frontend: 2 s)"
    )
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "devtools.reference_server", "--port", str(port)]
        + ["--latency", f"a100/generate={args.hold:g}"],
        cwd=REPO_ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    env = {
        **service_env(base),
        **BENCH_ENV,
        "GPU_POOL_SIZE": "100",
    }
    try:
        wait_for_http(f"{base}/sam3/health", 60, server)
        with tempfile.TemporaryDirectory() as root, temporary_stack(Path(root), env) as stack:
            with httpx.Client(base_url=stack.gateway_url, timeout=60) as client:
                ids = [client.post("/workflow/start", json=BODY).json()["workflowId"] for _ in range(args.runs)]
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:  # wait until every run is in its generation step
                    states = [client.get(f"/workflow/{w}").json() for w in ids]
                    if all(s.get("currentStep") == "GENERATING_IMAGES" for s in states):
                        break
                    time.sleep(0.5)
            gateway = [(f"{stack.gateway_url}/workflow/{w}", None) for w in ids]
            graphql = [(f"{stack.dagster_url}/graphql", {"query": _QUERY, "variables": {"tag": w}}) for w in ids]
            results = {}
            ours_wrk = wrk(stack.gateway_url, ids, args.pollers, args.seconds, stack.processes["gateway"].pid)
            if ours_wrk:
                verdict = "meets" if ours_wrk.rate >= 1000 and (ours_wrk.cpu_ms or 0) <= 1.0 else "MISSES"
                print(f"gateway GET, wrk, {args.pollers} connections back to back: {ours_wrk.line()}", flush=True)
                print(f"  target >= 1,000/s and <= 1 ms CPU a GET: {verdict}", flush=True)
            if args.wrk_only and ours_wrk:
                bodies = [json.dumps({"query": _QUERY, "variables": {"tag": w}}) for w in ids]
                lua = _POST_SCRIPT % ", ".join("[==[" + b + "]==]" for b in bodies)
                stock = run_wrk(stack.dagster_url, lua, args.pollers, args.seconds, stack.processes["webserver"].pid)
                print(f"baseline: GraphQL run query (webserver CPU), wrk: {stock.line()}", flush=True)
                ratio = ours_wrk.rate / stock.rate if stock.rate else float("inf")
                print(f"  ratio gateway/baseline (answers a second): {ratio:.2f}x", flush=True)
            modes = () if args.wrk_only else (("back to back", 0.0), (f"every {args.interval:g} s", args.interval))
            for mode, interval in modes:
                results[mode] = (
                    asyncio.run(poll_all(gateway, args.pollers, args.seconds, interval)),
                    asyncio.run(poll_all(graphql, args.pollers, args.seconds, interval)),
                )
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a held generation keeps it busy
            server.kill()
            server.wait(timeout=10)
    for mode, (ours, stock) in results.items():
        print(f"{args.pollers} pollers, {args.runs} runs in flight, each poller asking {mode}:")
        for name, samples in (("  gateway GET", ours), ("  baseline: GraphQL run query", stock)):
            rate = len(samples) / args.seconds
            print(
                f"{name}: n={len(samples)} ({rate:.0f}/s) median={statistics.median(samples) * 1000:.1f} ms "
                f"p95={percentile(samples, 95) * 1000:.1f} ms p99={percentile(samples, 99) * 1000:.1f} ms"
            )
        ratio = statistics.median(stock) / statistics.median(ours)
        verdict = "meets" if statistics.median(ours) <= 0.005 and percentile(ours, 99) <= 0.030 else "MISSES"
        print(f"  ratio baseline/gateway (median): {ratio:.1f}x; target p50 <= 5 ms, p99 <= 30 ms: {verdict}")


if __name__ == "__main__":
    main()
