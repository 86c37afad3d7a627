"""End to end, the gateway's concurrent launches, where no pixel counts: eight starts at once,
each launched exactly once, each run completed.

On the two-callers stack (TWO_CALLERS_STACK: instant image backends; requests as caller alpha).
Until issue 27 it ran in test_gateway.py on the embedded default, where the eight preprocess
runs did real GrabCut and segmentation for nothing it checks (8.8-13.7 s; 5.0 s here).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from devtools.stack import Stack
from jewel_dagster.contract import PREPROCESS_JOB
from tests.support.e2e_flows import CUP, PHOTO
from tests.support.e2e_flows import finished as _finished
from tests.support.e2e_stack import ALPHA, launched_runs, poll, runs_of
from tests.support.shared_stacks import TWO_CALLERS_STACK, SharedStacks, shared_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(shared_stacks: SharedStacks) -> Iterator[Stack]:
    yield from shared_stack(shared_stacks, TWO_CALLERS_STACK)


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=30, headers=ALPHA) as c:
        yield c


def test_concurrent_starts_are_all_accepted_launched_once_and_completed(client: httpx.Client, stack: Stack) -> None:
    """Found by the load benchmark: one shared GraphQL client failed concurrent launches. Starts
    launch in the background, so eight 200s prove nothing: each start must become exactly one
    run (none lost, none launched twice) that completes."""
    answers: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(base_url=stack.gateway_url, timeout=60, headers=ALPHA) as own:
            answers.append(own.post("/workflow/preprocess", json={"originalImageBase64": PHOTO, "maskPoints": [CUP]}))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [200] * 8, [a.text[:200] for a in answers if a.status_code != 200]
    workflows = [a.json()["workflowId"] for a in answers]
    assert len(set(workflows)) == 8, workflows
    for workflow in workflows:
        runs = launched_runs(stack, workflow, timeout=120)
        assert [r["jobName"] for r in runs] == [PREPROCESS_JOB], (workflow, runs)
    for workflow in workflows:
        final = poll(client, workflow, _finished, timeout=240)[-1]
        assert final["status"] == "COMPLETED", final
        assert set(final["result"]) == {"imageUri", "maskUri", "backends"}, final
        (run,) = runs_of(stack.dagster_url, workflow)  # still one run: nothing launched it again
        assert run["status"] == "SUCCESS", run
