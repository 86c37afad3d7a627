"""Target 3: GET /workflow/{id} latency with 100 concurrent pollers while runs are in flight.

    .venv/bin/python -m benchmarks.status [--pollers 100] [--seconds 20] [--runs 10]

Starts the reference model server (generation held at 30 s, so runs stay in flight) and a stack
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
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import BENCH_ENV, BODY, percentile
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
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=pollers, max_keepalive_connections=pollers)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def poller(index: int) -> None:
            url, body = url_for[index % len(url_for)]
            if interval:
                await asyncio.sleep(interval * index / pollers)  # spread the pollers over the interval
            while time.monotonic() < deadline:
                start = time.perf_counter()
                response = await (client.post(url, json=body) if body else client.get(url))
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
                if interval:
                    await asyncio.sleep(max(0.0, interval - (time.perf_counter() - start)))

        await asyncio.gather(*(poller(i) for i in range(pollers)))
    return latencies


_WRK_SCRIPT = """
ids = {%s}
n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/workflow/" .. ids[n %% #ids + 1])
end
"""


def _wrk_ms(text: str) -> float:
    """wrk's '812.00us', '4.71ms' or '1.20s' in milliseconds."""
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def wrk(base_url: str, ids: list[str], connections: int, seconds: float) -> str | None:
    """wrk (Debian's package) as the load generator: C, so the pollers do not eat the CPU the
    gateway needs, as a Python client does. None when wrk is not installed."""
    if shutil.which("wrk") is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT % ", ".join(f'"{w}"' for w in ids))
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", script.name, base_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    Path(script.name).unlink()
    found = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    rate = re.search(r"Requests/sec:\s+(\S+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return (
        f"wrk, {connections} connections back to back: {float(rate.group(1)) if rate else 0:.0f}/s "
        f"median={_wrk_ms(found.get('50', '0ms')):.1f} ms p99={_wrk_ms(found.get('99', '0ms')):.1f} ms"
        f"{', non-2xx: ' + errors.group(1) if errors else ''}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--interval", type=float, default=0.5, help="the paced pollers' interval (the seed's frontend: 2 s)"
    )
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "devtools.reference_server", "--port", str(port), "--latency", "a100/generate=30"],
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
            wrk_line = wrk(stack.gateway_url, ids, args.pollers, args.seconds)
            for mode, interval in (("back to back", 0.0), (f"every {args.interval:g} s", args.interval)):
                results[mode] = (
                    asyncio.run(poll_all(gateway, args.pollers, args.seconds, interval)),
                    asyncio.run(poll_all(graphql, args.pollers, args.seconds, interval)),
                )
    finally:
        server.terminate()
        server.wait(timeout=10)
    if wrk_line:
        print(f"gateway GET, {wrk_line}")
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
