"""A cancel that says CANCELLED only once the run stopped.

Dagster's terminate only asks: the run turns CANCELING, its worker is interrupted, and a step
that does not stop in time (a long C call, a retry of the interrupted step) can still finish the
run SUCCESS. Answering CANCELLED at the terminate then turned out false one time in a few
(issue 28: two of three requests cancelled at 45-70 % went on to COMPLETED). So the cancel waits,
bounded, for the run to end: the warm code server kills a worker still alive 5 s after its
cancel, and a pipeline that checks for the cancel between outputs ends it sooner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.models import RunInfo

POLL_SECONDS = 0.1


@dataclass(frozen=True)
class CancelOutcome:
    run: RunInfo  # the run as last seen
    stopped: bool  # it ended (CANCELED, or otherwise: see run.status)


def await_stop(runs: DagsterRuns, workflow_id: str, run_id: str, wait_seconds: float) -> CancelOutcome:
    """Read the workflow's newest run until the cancelled one ended or `wait_seconds` passed.

    A newer run of the workflow means the cancelled one ended before it was launched: reported
    as stopped, with the newer run (the caller answers with what the workflow now is).
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        run = runs.latest_run(workflow_id)
        if run is None:  # deleted meanwhile (retention): nothing runs
            return CancelOutcome(RunInfo(run_id, "", "CANCELED"), True)
        if run.run_id != run_id or run.ended or run.status == "FAILURE":
            return CancelOutcome(run, True)
        if time.monotonic() >= deadline:
            return CancelOutcome(run, False)
        time.sleep(POLL_SECONDS)
