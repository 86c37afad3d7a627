"""Replay a `benchmarks.eta --dump` file through `gateway.eta`, offline: try a change to the
estimator on the polls of a real burst without running the stack again (the benchmark takes
15 minutes on a loaded machine and needs it quiet to be comparable).

    .venv/bin/python -m benchmarks.eta_replay polls.json

The dump holds each request's polls (status, progress, position, etaSeconds) and its run's
RUN_START and end, not its step events, so the steps are read off the progress: `progress`
names the seed step a run is at, after its last materialization, so the first poll at
REMOVING_BACKGROUND (30) ends `prepare`, at REFINING_MASK (55) `segment`; `generate` (the brush
strokes and the images, one step since issue 28) runs to the run's end, its tail folded in. Each step's time from the
previous one's end is its `exec` sample (its `gap` and the tail 0: the pool's line is not in the
dump, so a step's wait for a `gpu` slot is in its sample, and the line's estimate is not
replayed). Samples enter the medians when their step ends, as the refresher gives them. Only
the polls once started are scored, as `benchmarks.eta` scores them (|eta - remaining| /
remaining, polls >= 1 s before the end), with the estimate made at the poll's time.

On the loaded run of 2026-12-04 the replay gives 23.3 % where the benchmark measured 25.0 %: the
difference is the pool's line, which the replay cannot see. Figures to compare variants, then:
not the benchmark's.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.eta import MIN_REMAINING
from gateway.eta import (
    TAIL,
    ActiveRun,
    Estimate,
    RollingMedians,
    StepTimes,
    exec_key,
    gap_key,
    remaining_seconds,
    seconds_left,
)
from jewel_dagster.contract import FULL_JOB, JOB_OPS, STEP_PROGRESS

OPS = tuple(JOB_OPS[FULL_JOB])
# The progress at which each step but the last is over (see above).
ENDS_AT = (STEP_PROGRESS["REMOVING_BACKGROUND"], STEP_PROGRESS["REFINING_MASK"])
# The warm-up request's steps before the burst (a quiet run: the dump does not hold them).
# (Measured with four steps: refine 0.6 s and generate 2.5 s, summed here for the one step.)
WARM_UP = dict(zip(OPS, (1.2, 1.3, 3.1), strict=True))


@dataclass(frozen=True)
class Replayed:
    run_id: str
    bounds: tuple[float, ...]  # RUN_START, each step's end (the last: the run's end)
    polls: list[dict[str, Any]]


def read(dump: Path) -> list[Replayed]:
    out = []
    for request in json.loads(dump.read_text()):
        started, ended = request["started"], request["ended"]
        bounds = [started]
        for progress in ENDS_AT:
            at = next((p["at"] for p in request["polls"] if p["progress"] >= progress and p["at"] >= started), None)
            bounds.append(bounds[-1] if at is None else max(at, bounds[-1]))
        bounds.append(ended)
        out.append(Replayed(request["workflow_id"], tuple(bounds), request["polls"]))
    return out


def medians_at(now: float, samples: list[tuple[float, str, float]]) -> RollingMedians:
    """The medians as the refresher had them at `now`: the warm-up, then every step ended before."""
    medians = RollingMedians()
    medians.add(TAIL, 0.0)
    for op, seconds in WARM_UP.items():
        medians.add(gap_key(op), 0.0)
        medians.add(exec_key(op), seconds)
    for at, op, seconds in samples:
        if at >= now:
            break
        medians.add(gap_key(op), 0.0)
        medians.add(exec_key(op), seconds)
    return medians


def replay(runs: list[Replayed]) -> tuple[list[float], list[float]]:
    """(absolute % errors, signed % errors) of the polls once started, as benchmarks.eta scores."""
    samples = sorted((r.bounds[i + 1], op, r.bounds[i + 1] - r.bounds[i]) for r in runs for i, op in enumerate(OPS))
    absolute: list[float] = []
    signed: list[float] = []
    for run in runs:
        started, ended = run.bounds[0], run.bounds[-1]
        for poll in run.polls:
            now = poll["at"]
            left = ended - now
            if poll["status"] != "RUNNING" or now < started or left < MIN_REMAINING:
                continue
            steps = {
                op: StepTimes(run.bounds[i], run.bounds[i + 1] if run.bounds[i + 1] <= now else None)
                for i, op in enumerate(OPS)
                if run.bounds[i] <= now
            }
            view = ActiveRun(run.run_id, OPS, "STARTED", started, started=started, steps=steps)
            remaining = remaining_seconds(view, medians_at(now, samples), now)
            if remaining is None:
                continue
            eta = seconds_left(Estimate(None, now + remaining), now)
            assert eta is not None
            absolute.append(100 * abs(eta - left) / left)
            signed.append(100 * (eta - left) / left)
    return absolute, signed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump", type=Path, help="a benchmarks.eta --dump file")
    args = parser.parse_args()
    absolute, signed = replay(read(args.dump))
    if not absolute:
        raise SystemExit("no poll once started to score")
    print(
        f"replayed once started: n={len(absolute)} median {statistics.median(absolute):.1f} % "
        f"(signed median {statistics.median(signed):+.1f} %)"
    )


if __name__ == "__main__":
    main()
