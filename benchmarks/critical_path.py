"""Target 2: end-to-end time against the critical path, with the reference server's latencies.

    .venv/bin/python -m benchmarks.critical_path [--requests 5]

SAM3 segmentation 1.0 s, Flux 3.0 s and Gemini 2.0 s (all four model services and Gemini on the
reference server). A request waits for SAM3 on the canvas (the jewelry mask), then Flux and
Gemini at once, and SAM3 again on the Flux image (flux_metrics: the fidelity check), which
needs Flux's answer but not Gemini's: the critical path is 1.0 + max(3.0 + 1.0, 2.0) = 5.0 s
(until 2026-12-05 this said 4.0 s, leaving out the second SAM3 call). The other calls (resize,
zoom check, background removal, refinement) have no latency knob. The target is end-to-end <=
critical path + 0.5 s.

The reference server answers with its instant stand-ins (`--instant`), so a call's model time
is its latency knob, as the critical path counts it. `--server classical` runs its classical
vision instead (GrabCut for SAM3, the studio composite for Flux: ~0.3-0.4 s of CPU a call on
these 2 cores, on top of the knob), as every figure until 2026-12-05 did.

Baselines in the same run: the same requests on Dagster's stock settings (5 s queue polling,
multiprocess executor), and on ours with the stock artifact encoding (libpng's adaptive PNG
filter, every load decoding its blob).

    .venv/bin/python -m benchmarks.critical_path --only ours --only "ours, stock artifacts"

`--paired-base DIR` compares ours with another checkout's code instead, both stacks up at once
and requests alternating (`git archive <commit> jewel_dagster | tar -x -C DIR`): on a shared
machine the load then falls on both alike.

`--timeline` also prints each request of each setup laid out in time from its POST: the run's
start and end, each step's start and end (Dagster's events), each model call as the reference
server saw it (came in, answered, minus its latency knob: the server's own work and the
transfer), and the seconds each asset's model call took in the run worker (the assets'
`seconds` metadata: encode, transfer, server, decode).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import BENCH_ENV, BODY, final_state, percentile, reference_services
from devtools.stack import temporary_stack

LATENCY = {"sam3/segment": 1.0, "a100/generate": 3.0, "gemini/generate-content": 2.0}
SETUPS = {
    "stock": {"DAGSTER_STOCK_SETTINGS": "true", "JOB_EXECUTOR": "multiprocess", "CODE_SERVER": "managed"},
    "ours, stock artifacts": {"ARTIFACT_PNG_FILTER": "adaptive", "ARTIFACT_REUSE_MEGABYTES": "0"},
    "ours": {},
}
# SAM3 (the mask), then Flux followed by SAM3 on its image (the metrics) beside Gemini.
CRITICAL_PATH = LATENCY["sam3/segment"] + max(
    LATENCY["a100/generate"] + LATENCY["sam3/segment"], LATENCY["gemini/generate-content"]
)


_RUN = """
query Run($tag: String!) {
  runsOrError(filter: {tags: [{key: "dagster/partition", value: $tag}]}) {
    ... on Runs { results { runId startTime endTime } }
  }
}"""
_EVENTS = """
query Events($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection { events {
      ... on MessageEvent { eventType stepKey timestamp }
      ... on MaterializationEvent {
        assetKey { path }
        metadataEntries { label ... on FloatMetadataEntry { floatValue } }
      }
    } }
  }
}"""


def timeline(dagster_url: str, reference_url: str, workflow: str, posted: float) -> list[str]:
    """One request's lines: what happened when, in seconds from its POST (`posted`, Unix time)."""
    run = httpx.post(f"{dagster_url}/graphql", json={"query": _RUN, "variables": {"tag": workflow}}, timeout=60)
    times = run.json()["data"]["runsOrError"]["results"][0]
    events = httpx.post(
        f"{dagster_url}/graphql", json={"query": _EVENTS, "variables": {"runId": times["runId"]}}, timeout=60
    ).json()["data"]["logsForRun"]["events"]
    rows: list[tuple[float, str]] = [(times["startTime"], "RUN_START"), (times["endTime"], "run end")]
    for event in events:
        kind, at = event.get("eventType"), int(event.get("timestamp", 0)) / 1000
        if kind in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE", "STEP_UP_FOR_RETRY"):
            rows.append((at, f"{kind} {event['stepKey']}"))
        elif kind == "ASSET_MATERIALIZATION":
            seconds = {e["label"]: e.get("floatValue") for e in event["metadataEntries"]}.get("seconds")
            took = f" (its call {seconds:.2f} s in the run worker)" if seconds else ""
            rows.append((at, f"  materialized {event['assetKey']['path'][-1]}{took}"))
    for call in httpx.get(f"{reference_url}/_stats/timing", timeout=10).json():
        if call["received"] >= posted:
            endpoint = call["path"].strip("/")
            endpoint = "gemini/generate-content" if endpoint.startswith("gemini/") else endpoint
            served = call["answered"] - call["received"]
            rows.append(
                (
                    call["received"],
                    f"    server: {endpoint} came in, answered at +{call['answered'] - posted:.2f} s: "
                    f"{served:.2f} s, {served - LATENCY.get(endpoint, 0.0):.2f} s over its knob",
                )
            )
    return [f"  +{at - posted:6.2f} s {what}" for at, what in sorted(rows)]


def one_request(client: httpx.Client) -> tuple[str, float, float]:
    """Start one request and wait until GET says COMPLETED: (workflow id, POST time (Unix), seconds)."""
    posted_wall, start = time.time(), time.perf_counter()
    workflow = client.post("/workflow/start", json=BODY).json()["workflowId"]
    state = final_state(client, workflow)
    if state["status"] != "COMPLETED":
        raise RuntimeError(f"ended {state['status']}: {state.get('error')}")
    return workflow, posted_wall, time.perf_counter() - start


def run_requests(env: dict[str, str], requests: int, show_timeline: bool = False) -> list[float]:
    reference_url = env["SAM3_URL"].removesuffix("/sam3")
    with tempfile.TemporaryDirectory() as root, temporary_stack(Path(root), env) as stack:
        with httpx.Client(base_url=stack.gateway_url, timeout=60) as client:
            samples = []
            for i in range(requests + 1):  # the first one warms the code servers up
                workflow, posted_wall, seconds = one_request(client)
                if i:
                    samples.append(seconds)
                if i and show_timeline:
                    lines = timeline(stack.dagster_url, reference_url, workflow, posted_wall)
                    print(f"request {i}: GET COMPLETED at +{seconds:.2f} s", *lines, sep="\n", flush=True)
    return samples


def run_paired(env: dict[str, str], base: str, requests: int) -> dict[str, list[float]]:
    """`ours` and the code at `base` (a folder holding another checkout's `jewel_dagster`, put
    first on the stack's PYTHONPATH), both stacks up at once, requests alternating: a loaded
    machine's drift then falls on both alike."""
    names = ("ours", f"ours at {base}")
    envs = (env, {**env, "PYTHONPATH": base})
    with contextlib.ExitStack() as resources:
        clients = []
        for stack_env in envs:
            root = resources.enter_context(tempfile.TemporaryDirectory())
            stack = resources.enter_context(temporary_stack(Path(root), stack_env))
            clients.append(resources.enter_context(httpx.Client(base_url=stack.gateway_url, timeout=60)))
        samples: dict[str, list[float]] = {name: [] for name in names}
        for i in range(requests + 1):  # the first round warms the code servers up
            for name, client in zip(names if i % 2 else names[::-1], clients if i % 2 else clients[::-1], strict=True):
                seconds = one_request(client)[2]
                if i:
                    samples[name].append(seconds)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--only", choices=list(SETUPS), action="append", help="run only these setups")
    parser.add_argument("--timeline", action="store_true", help="print each request laid out in time")
    parser.add_argument(
        "--server", choices=["instant", "classical"], default="instant", help="the reference server's stand-ins"
    )
    parser.add_argument(
        "--paired-base",
        metavar="DIR",
        help="instead: ours against the jewel_dagster in DIR (e.g. `git archive <commit> jewel_dagster`), "
        "both stacks up at once, requests alternating",
    )
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    print(f"reference server: {args.server} stand-ins, latencies {LATENCY}", flush=True)
    with reference_services(LATENCY, instant=args.server == "instant") as services:
        env = {**services, **BENCH_ENV}
        if args.paired_base:
            results = run_paired(env, args.paired_base, args.requests)
        else:
            for name in args.only or SETUPS:
                results[name] = run_requests({**env, **SETUPS[name]}, args.requests, args.timeline)
                _report(name, results[name])
    if args.paired_base:
        for name, samples in results.items():
            _report(name, samples)
    if "ours" in results:
        ours = statistics.median(results["ours"])
        for baseline in [b for b in results if b != "ours"]:
            print(f"ratio {baseline} / ours (median): {statistics.median(results[baseline]) / ours:.2f}x")
        verdict = "meets" if ours <= CRITICAL_PATH + 0.5 else "MISSES"
        print(f"target <= {CRITICAL_PATH + 0.5:.1f} s: {verdict}")


def _report(name: str, samples: list[float]) -> None:
    print(
        f"{name}: n={len(samples)} median={statistics.median(samples):.2f} s "
        f"p95={percentile(samples, 95):.2f} s overhead over the {CRITICAL_PATH:.1f} s critical path: "
        f"{statistics.median(samples) - CRITICAL_PATH:.2f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
