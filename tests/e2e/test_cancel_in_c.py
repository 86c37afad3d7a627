"""Issue 14: a cancel stops a step stuck in C, where the cancel's interrupt cannot reach it.

The local refiner holds a core inside one numpy call for 10 minutes (LOCAL_REFINE_BUSY_SECONDS):
a stand-in for a long OpenCV or numpy call, where the cancel's SIGINT waits for the call to return.
Only the warm code server's kill, CANCEL_GRACE_SECONDS after the cancel (README, Faults), ends it.

On test_run_queue's stack (WOKEN_QUEUE_STACK, which sets that refiner for this file: a request
with brush strokes only): instant stand-ins before the refiner (no pixels are checked here; the
busy refiner is the local one whatever LOCAL_BACKENDS says), no re-generation sensor. Until issue
27 it started a stack of its own, in test_stroke_limits.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.stack import Stack, descendants
from jewel_dagster.runtime.processes.warm_code_server import CANCEL_GRACE_SECONDS
from tests.support.e2e_flows import CUP, PHOTO, TOUCH_UP, finished
from tests.support.e2e_stack import poll, run_worker, runs_of, wait_until
from tests.support.shared_stacks import WOKEN_QUEUE_STACK, SharedStacks, shared_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(shared_stacks: SharedStacks) -> Iterator[Stack]:
    yield from shared_stack(shared_stacks, WOKEN_QUEUE_STACK)


def test_cancel_of_a_step_stuck_in_c_is_escalated_to_a_kill_and_the_run_ends_canceled(stack: Stack) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=60) as client:
        # A stroke: without any, generate_images keeps the mask without calling the refiner.
        body = {"originalImageBase64": PHOTO, "maskPoints": [CUP], "brushStrokes": [TOUCH_UP]}
        started = client.post("/workflow/start", json=body).json()
        rid = started["workflowId"]
        poll(client, rid, lambda s: s["currentStep"] == "REFINING_MASK", timeout=180)
        # REFINING_MASK shows once the step starts; a cancel before the C call begins is stopped
        # by the step's own check (in ~2 s), not by the kill this test is about. Wait until the
        # run worker spent 1.5 CPU-s more (the step's work before the call is well under that).
        worker = wait_until(lambda: run_worker(stack), "the run worker", timeout=60)
        at_refine = _cpu_seconds([worker])
        wait_until(lambda: _cpu_seconds([worker]) - at_refine >= 1.5, "the refiner inside its C call", timeout=120)
        cancelled_at = time.monotonic()
        # 200 once the run stopped (the kill 5 s after the cancel), 202 if it is still stopping:
        # Dagster's status read at once tells which was true.
        answer = client.post(f"/workflow/{rid}/cancel")
        (at_answer,) = runs_of(stack.dagster_url, rid)
        assert (answer.status_code, answer.json()["status"]) in ((200, "CANCELLED"), (202, "RUNNING")), answer.text
        if answer.status_code == 200:
            assert at_answer["status"] == "CANCELED", at_answer["status"]
        final = poll(client, rid, finished, timeout=60)[-1]
        assert final["status"] == "CANCELLED", final
        deadline = cancelled_at + CANCEL_GRACE_SECONDS + 5  # room for a loaded 2-core machine
        while True:
            (run,) = runs_of(stack.dagster_url, rid)
            if run["status"] == "CANCELED":
                break
            assert time.monotonic() < deadline, f"run still {run['status']}: {run['stepStats']}"
            time.sleep(0.2)
        ended = time.monotonic() - cancelled_at
        print(f"\nstep stuck in C: run CANCELED {ended:.1f} s after the cancel")
        assert ended >= CANCEL_GRACE_SECONDS - 1, f"CANCELED after {ended:.1f} s: the interrupt stopped the C call?"
        killed = f"did not stop within {CANCEL_GRACE_SECONDS:.0f} s of the cancel and was killed"
        messages = _run_messages(stack.dagster_url, run["runId"])
        assert any(killed in m for m in messages), messages
        assert poll(client, rid, finished, timeout=60)[-1]["status"] == "CANCELLED"
        # The work stopped too: nothing under the code server keeps burning a core.
        tree = [stack.processes["code_server"].pid, *descendants([stack.processes["code_server"].pid])]
        before, start = _cpu_seconds(tree), time.monotonic()
        deadline = start + 2.0
        while time.monotonic() < deadline:
            time.sleep(0.1)
        assert _cpu_seconds(tree) - before < 0.5 * (time.monotonic() - start)


_RUN_MESSAGES = """
query Messages($runId: ID!) {
  logsForRun(runId: $runId) { ... on EventConnection { events { ... on MessageEvent { message } } } }
}"""


def _run_messages(dagster_url: str, run_id: str) -> list[str]:
    """The messages of a run's event log (the engine events the UI shows)."""
    body = {"query": _RUN_MESSAGES, "variables": {"runId": run_id}}
    events = httpx.post(f"{dagster_url}/graphql", json=body, timeout=30).json()["data"]["logsForRun"]["events"]
    return [e["message"] for e in events if e.get("message")]


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes still alive, from /proc."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
