"""End to end: the stack's run queue starts a request's run when it is queued (the coordinator in
the webserver wakes our daemon loop, jewel_dagster/runtime/processes/queue_daemon.py), not at the poll.

The daemon polls the queue every 600 s here: a run that starts within a minute of its creation,
twice in a row (the second is queued after the first ended), was started by a wake."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devtools.stack import Stack
from tests.support.e2e_flows import CUP, PHOTO
from tests.support.e2e_stack import poll, wait_until
from tests.support.shared_stacks import WOKEN_QUEUE_STACK, SharedStacks, shared_stack

pytestmark = pytest.mark.e2e

POLL_SECONDS = float(WOKEN_QUEUE_STACK.env["RUN_QUEUE_POLL_SECONDS"])
BOUND_SECONDS = 60.0  # generous on a loaded machine (a quiet one: ~0.3 s), and far below the poll

_TIMES = """
query Times($tag: String!) {
  runsOrError(filter: {tags: [{key: "dagster/partition", value: $tag}]}) {
    ... on Runs { results { runId status creationTime startTime } }
  }
}"""
_EVENTS = """
query Events($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection { events { __typename ... on MessageEvent { timestamp } } }
  }
}"""


@pytest.fixture(scope="module")
def stack(shared_stacks: SharedStacks) -> Iterator[Stack]:
    yield from shared_stack(shared_stacks, WOKEN_QUEUE_STACK)


def _run_times(stack: Stack, workflow_id: str) -> dict[str, Any]:
    def started() -> dict[str, Any] | None:
        body = httpx.post(
            f"{stack.dagster_url}/graphql", json={"query": _TIMES, "variables": {"tag": workflow_id}}, timeout=30
        ).json()
        runs = body["data"]["runsOrError"]["results"]
        return runs[0] if runs and runs[0]["startTime"] else None

    return wait_until(started, f"the run of {workflow_id} started", timeout=BOUND_SECONDS + 30)  # type: ignore[no-any-return]


def _event_times(stack: Stack, run_id: str) -> dict[str, float]:
    """Seconds of each run lifecycle event (the first of each kind) of the run."""
    body = httpx.post(
        f"{stack.dagster_url}/graphql", json={"query": _EVENTS, "variables": {"runId": run_id}}, timeout=30
    ).json()
    times: dict[str, float] = {}
    for event in body["data"]["logsForRun"]["events"]:
        if "timestamp" in event:
            times.setdefault(event["__typename"], int(event["timestamp"]) / 1000)
    return times


def test_runs_start_when_queued_not_at_the_queue_poll(stack: Stack) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=60) as client:
        for _ in range(2):
            started = client.post("/workflow/start", json={"originalImageBase64": PHOTO, "maskPoints": [CUP]})
            assert started.status_code == 200, started.text
            workflow_id = started.json()["workflowId"]
            run = _run_times(stack, workflow_id)
            at = _event_times(stack, run["runId"])
            queued = at["RunStartingEvent"] - at["RunEnqueuedEvent"]  # the daemon's dequeue
            print(
                f"\nrun created -> RUN_START {run['startTime'] - run['creationTime']:.2f} s: created -> enqueued "
                f"{at['RunEnqueuedEvent'] - run['creationTime']:.2f} s, in the queue {queued:.2f} s, "
                f"worker start {at['RunStartEvent'] - at['RunStartingEvent']:.2f} s"
            )
            assert queued < BOUND_SECONDS, f"queued {queued:.1f} s: the queue waited for its poll"
            final = poll(client, workflow_id, lambda s: s["status"] != "RUNNING", timeout=300)[-1]
            assert final["status"] == "COMPLETED", final
