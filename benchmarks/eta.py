"""Issue 33.2: how honest `etaSeconds` is, and whether `queuePosition` ever rises.

    .venv/bin/python -m benchmarks.eta [--requests 40] [--poll 1.0]

A burst of requests (posted at once) against the whole stack with the reference model server's
latencies (SAM3 1.0 s, Flux 3.0 s, Gemini 2.0 s, as benchmarks.burst and critical_path), after
one warm-up request (a gateway that has seen no run has no medians yet). Every `--poll` seconds
each unfinished request is read with GET; once all ended, each run's actual end (and RUN_START)
is read from Dagster's storage, so the error is measured against the true end, not the next poll.

For each poll: |etaSeconds - actual remaining| as a share of the actual remaining, for polls at
least 1 s before the end (closer, a rounding second is a large share). Reported "once started"
(after the run's RUN_START; the target: median <= 20 %) and while queued, with a naive baseline in
the same run: the reference latencies of the model steps not done yet (SAM3 1 s until the mask is
made, then max(Flux, Gemini) 3 s), the queue ignored. Also: how many polls had an ETA, and whether
any request's position rose within one wait (a wait: the run queue before the run's RUN_START, then
the GPU pool's line at one step's progress; the target is never, even across a null poll), or a
wait began above where the previous one ended (told apart: the run queue then the GPU pool,
different lines; one pooled step then the next).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import BENCH_ENV, BODY, final_state, percentile, reference_services
from devtools.stack import temporary_stack
from jewel_dagster.contract import PARTITION_TAG, STEP_PROGRESS

LATENCY = {"sam3/segment": 1.0, "a100/generate": 3.0, "gemini/generate-content": 2.0}
MIN_REMAINING = 1.0  # polls closer to the end than this are not scored
TARGET_PERCENT = 20.0


@dataclass
class Poll:
    at: float  # unix seconds
    status: str
    progress: int
    position: int | None
    eta: int | None


@dataclass
class Request:
    workflow_id: str
    polls: list[Poll] = field(default_factory=list)
    started: float | None = None  # RUN_START
    ended: float | None = None


def naive_eta(progress: int) -> float:
    """The reference latencies of the model steps still to come, the queue ignored."""
    mask_left = LATENCY["sam3/segment"] if progress <= STEP_PROGRESS["GENERATING_MASK"] else 0.0
    generate = max(LATENCY["a100/generate"], LATENCY["gemini/generate-content"])
    return mask_left + (generate if progress <= STEP_PROGRESS["GENERATING_IMAGES"] else 0.0)


@dataclass(frozen=True)
class Rises:
    """How a request's `queuePosition` went up, as the person polling it saw it."""

    same_step: int = 0  # above the last position shown at the same step (progress): the target
    same_step_after_null: int = 0  # of those, how many came after a null poll at that step
    queue_to_pool: int = 0  # the first pool position above the run queue's last one
    pool_to_pool: int = 0  # a pooled step's first position above the previous pooled step's last


def position_rises(polls: list[Poll], started: float | None = None) -> Rises:
    """Rises of the position, told apart by wait. A wait is one line (the run queue before the
    run's RUN_START, `started`; the GPU pool's after it) at one progress (one per pooled step);
    without `started`, the first steps' progress stands for the run queue. Comparing only
    consecutive non-null positions took the wait for the next step (a short pooled step run
    between two polls) for the same wait; comparing by progress alone took the run queue's last
    position and the pool's first, both at the first step's progress, for one wait. Every rise
    within a wait counts for the target, even across a null poll: the person sees it go up."""

    def wait_of(poll: Poll) -> tuple[bool, int]:
        in_pool = poll.progress >= STEP_PROGRESS["REMOVING_BACKGROUND"] if started is None else poll.at >= started
        return in_pool, poll.progress

    same = after_null = queue_to_pool = pool_to_pool = 0
    last_at: dict[tuple[bool, int], int] = {}  # wait -> the last position shown there
    previous: tuple[tuple[bool, int], int] | None = None  # (wait, position) of the last non-null position
    null_since: set[tuple[bool, int]] = set()  # waits with a null poll since their last position
    for poll in polls:
        wait = wait_of(poll)
        if poll.position is None:
            null_since.add(wait)
            continue
        if wait in last_at:
            if poll.position > last_at[wait]:
                same += 1
                after_null += wait in null_since
        elif previous is not None and poll.position > previous[1]:
            if not previous[0][0] and wait[0]:
                queue_to_pool += 1
            else:
                pool_to_pool += 1
        last_at[wait] = poll.position
        null_since.discard(wait)
        previous = (wait, poll.position)
    return Rises(same, after_null, queue_to_pool, pool_to_pool)


def burst(base_url: str, requests: int, poll_seconds: float, home: str) -> list[Request]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        warm = client.post("/workflow/start", json=BODY).json()["workflowId"]
        if final_state(client, warm)["status"] != "COMPLETED":
            raise RuntimeError("the warm-up request did not complete")
        time.sleep(2 * poll_seconds)  # the refresher has seen it end

        def post(_: int) -> str:
            return str(client.post("/workflow/start", json=BODY).json()["workflowId"])

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            found = [Request(w) for w in pool.map(post, range(requests))]
        open_ = list(found)
        deadline = time.monotonic() + 1800
        while open_ and time.monotonic() < deadline:
            tick = time.monotonic()
            for request in list(open_):
                response = client.get(f"/workflow/{request.workflow_id}")
                if response.status_code != 200:
                    raise RuntimeError(f"GET answered {response.status_code}: {response.text[:200]}")
                body = response.json()
                request.polls.append(
                    Poll(
                        time.time(), body["status"], body["progress"], body.get("queuePosition"), body.get("etaSeconds")
                    )
                )
                if body["status"] != "RUNNING":
                    if body["status"] != "COMPLETED":
                        raise RuntimeError(f"{request.workflow_id} ended {body['status']}: {body.get('error')}")
                    open_.remove(request)
            time.sleep(max(0.0, poll_seconds - (time.monotonic() - tick)))
        if open_:
            raise RuntimeError(f"{len(open_)} requests did not end in 30 minutes")
    _read_run_times(home, found)
    return found


def _read_run_times(home: str, found: list[Request]) -> None:
    import dagster as dg

    instance = dg.DagsterInstance.from_config(home)
    try:
        for request in found:
            records = instance.get_run_records(dg.RunsFilter(tags={PARTITION_TAG: request.workflow_id}), limit=1)
            request.started, request.ended = records[0].start_time, records[0].end_time
    finally:
        instance.dispose()


def errors(found: list[Request]) -> dict[str, Any]:
    scored: dict[str, list[float]] = {"ours started": [], "naive started": [], "ours queued": [], "naive queued": []}
    running_polls = with_eta = 0
    # Seconds wrong and seconds remaining, summed per phase: a long wait weighs by its length, so a
    # few polls near the end (small denominators) cannot dominate. Reported beside the target only.
    weighted: dict[str, list[float]] = {"started": [0.0, 0.0], "queued": [0.0, 0.0]}
    for request in found:
        assert request.started is not None and request.ended is not None
        for poll in request.polls:
            if poll.status != "RUNNING":
                continue
            running_polls += 1
            with_eta += poll.eta is not None
            left = request.ended - poll.at
            if left < MIN_REMAINING:
                continue
            phase = "started" if poll.at >= request.started else "queued"
            if poll.eta is not None:
                scored[f"ours {phase}"].append(100 * abs(poll.eta - left) / left)
                weighted[phase][0] += abs(poll.eta - left)
                weighted[phase][1] += left
            scored[f"naive {phase}"].append(100 * abs(naive_eta(poll.progress) - left) / left)
    rises = [position_rises(r.polls, r.started) for r in found]
    return {
        "rises": Rises(*(sum(getattr(r, f.name) for r in rises) for f in dataclasses.fields(Rises))),
        "requests_with_rise": sum(1 for r in rises if r.same_step),
        "scored": scored,
        "coverage": (with_eta, running_polls),
        "weighted": {phase: 100 * wrong / left if left else float("nan") for phase, (wrong, left) in weighted.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between a request's GETs")
    parser.add_argument("--dump", type=Path, help="write every poll and each run's times here (JSON)")
    args = parser.parse_args()
    with reference_services(LATENCY) as services, tempfile.TemporaryDirectory() as root:
        with temporary_stack(Path(root), {**services, **BENCH_ENV}) as stack:
            began = time.monotonic()
            found = burst(stack.gateway_url, args.requests, args.poll, stack.env["DAGSTER_HOME"])
            took = time.monotonic() - began
    if args.dump:
        args.dump.write_text(json.dumps([dataclasses.asdict(r) for r in found]))
    result = errors(found)
    print(f"{args.requests} requests in a burst, polled every {args.poll:.1f} s: {took:.0f} s in all")
    with_eta, running = result["coverage"]
    print(f"polls while RUNNING with an etaSeconds: {with_eta}/{running}")
    print(f"absolute error, as a share of the actual remaining (polls >= {MIN_REMAINING:.0f} s before the end):")
    for name, values in result["scored"].items():
        middle = statistics.median(values) if values else float("nan")
        print(f"{name:>15}: n={len(values):4d} median {middle:6.1f} % p95 {percentile(values, 95):6.1f} %")
    weighted = result["weighted"]
    print(
        f"time-weighted (sum |error| / sum remaining; not the target): started {weighted['started']:.1f} %, "
        f"queued {weighted['queued']:.1f} %"
    )
    rises: Rises = result["rises"]
    print(
        f"queuePosition rose at the same step: {rises.same_step} times ({result['requests_with_rise']} requests; "
        f"{rises.same_step_after_null} after a null poll at that step)"
    )
    print(
        f"a step's wait began above the previous step's last position (not the target): run queue -> GPU pool "
        f"{rises.queue_to_pool} times, GPU pool step -> next GPU pool step {rises.pool_to_pool} times"
    )
    ours = result["scored"]["ours started"]
    median = statistics.median(ours) if ours else float("inf")
    verdict = "meets" if median <= TARGET_PERCENT and rises.same_step == 0 else "MISSES"
    print(f"target: median <= {TARGET_PERCENT:.0f} % once started, no rise: {verdict}")


if __name__ == "__main__":
    main()
