"""Against the real stack with API keys: ownership, idempotency, and a fuzz pass over the API."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from devtools.stack import Stack
from tests.support.answers import NEEDS_KEY, assert_refused, no_workflow
from tests.support.e2e_flows import CUP, PHOTO, finished
from tests.support.e2e_stack import ALPHA, BETA, launched_runs, poll, wait_until
from tests.support.gpu_pool import held_pool
from tests.support.shared_stacks import TWO_CALLERS_STACK, SharedStacks, shared_stack

pytestmark = pytest.mark.e2e

A, B = ALPHA, BETA
BODY = {"originalImageBase64": PHOTO, "maskPoints": [CUP]}
ENDED = ("SUCCESS", "FAILURE", "CANCELED")  # Dagster run statuses that are final
# Each example is an HTTP call to a real stack (slow), and schemathesis' negative cases are
# filtered and large by design; the checks of the test's own code stay on.
FUZZ_HEALTH_CHECKS = [
    HealthCheck.too_slow,
    HealthCheck.filter_too_much,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
]
# Examples per operation and mode, each run. The test process spends ~70 % of the test generating
# them (schemathesis' negative bodies the most): 50 cost ~15 s of a core for ~1,200 requests;
# 25 halve that. Every run explores anew (random, not derandomized) and replays the failures kept
# in the example database first (tests/conftest.py), so runs add up to far more than one run's.
FUZZ_EXAMPLES = 25


@pytest.fixture(scope="module")
def stack(shared_stacks: SharedStacks) -> Iterator[Stack]:
    yield from shared_stack(shared_stacks, TWO_CALLERS_STACK)


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=60) as c:
        yield c


def test_a_caller_reads_and_cancels_only_its_own_workflows(client: httpx.Client) -> None:
    assert_refused(client.post("/workflow/start", json=BODY), 401, NEEDS_KEY)
    workflow = client.post("/workflow/preprocess", json=BODY, headers=A).json()["workflowId"]
    # Another caller's workflow answers exactly like one that does not exist.
    assert_refused(client.get(f"/workflow/{workflow}", headers=B), 404, no_workflow(workflow))
    assert_refused(client.post(f"/workflow/{workflow}/cancel", headers=B), 404, no_workflow(workflow))
    done = client.get(f"/workflow/{workflow}", headers=A)
    assert done.status_code == 200
    final = poll(client, workflow, finished, headers=A)[-1]
    assert final["status"] == "COMPLETED"
    # Another caller cannot generate from this request's blobs either.
    stolen = client.post("/workflow/generate", json=final["result"], headers=B)
    assert_refused(stolen, 404, no_workflow(workflow))
    mine = client.post("/workflow/generate", json=final["result"], headers=A)
    assert mine.status_code == 200 and mine.json()["workflowId"] == workflow


def test_idempotency_key_returns_the_same_workflow(client: httpx.Client, stack: Stack) -> None:
    headers = {**A, "Idempotency-Key": "order-1234-try"}
    answers: list[str] = []

    def post() -> None:
        answers.append(client.post("/workflow/start", json=BODY, headers=headers).json()["workflowId"])

    threads = [threading.Thread(target=post) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    post()  # and a late retry
    assert len(set(answers)) == 1, answers
    assert len(launched_runs(stack, answers[0])) == 1
    other = client.post("/workflow/start", json=BODY, headers={**B, "Idempotency-Key": "order-1234-try"})
    assert other.json()["workflowId"] != answers[0]  # keys are per caller
    too_long = client.post("/workflow/start", json=BODY, headers={**A, "Idempotency-Key": "k" * 201})
    assert_refused(too_long, 400, "Idempotency-Key: 1 to 200 printable characters")


def test_usage_counts_the_callers_own_workflows_and_runs_in_flight(stack: Stack, client: httpx.Client) -> None:
    """GET /usage against the real Dagster: its count of runs in flight is Dagster's own query.
    B's run waits in the `gpu` pool's line (every slot held by a stand-in) while the count is
    read, so it is in flight for as long as the test looks (a count always 0 passed before)."""
    before = client.get("/usage", headers=B).json()
    with held_pool(stack.env["DAGSTER_HOME"], waiting=0):
        workflow = client.post("/workflow/preprocess", json=BODY, headers=B).json()["workflowId"]
        during = client.get("/usage", headers=B)
        assert during.status_code == 200, during.text
        assert during.json()["workflowsToday"] == before["workflowsToday"] + 1
        assert during.json()["runsInFlightLimit"] == 2

        def counted() -> bool:
            return client.get("/usage", headers=B).json()["runsInFlight"] >= 1

        wait_until(counted, "B's held run counted in flight", timeout=120)
    poll(client, workflow, finished, headers=B)
    # Earlier tests' runs of B may still be going: they end too.
    wait_until(lambda: client.get("/usage", headers=B).json()["runsInFlight"] == 0, "B's runs ended", timeout=300)


def _has_inputs(operation: Any) -> bool:
    """Whether a negative (schema-violating) case can exist: GET /health has nothing to break."""
    parts = (operation.path_parameters, operation.query, operation.headers, operation.cookies, operation.body)
    return any(len(part) for part in parts)


def test_fuzzing_the_openapi_schema_gives_no_server_error(stack: Stack) -> None:
    """Every answer is no 5xx, has a documented status, and matches the documented body."""
    schema = schemathesis.openapi.from_url(f"{stack.gateway_url}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
    statuses: Counter[int] = Counter()
    failures: dict[tuple[str, int], str] = {}  # one per (operation, status): the first is enough
    with httpx.Client(base_url=stack.gateway_url, timeout=60, headers=A) as http:
        for result in schema.get_all_operations():
            operation = result.ok()
            modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if _has_inputs(operation) else []
            for mode in modes or [GenerationMode.POSITIVE]:

                @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=FUZZ_HEALTH_CHECKS)
                @given(case=operation.as_strategy(generation_mode=mode))
                def send(case: schemathesis.Case) -> None:
                    kwargs = case.as_transport_kwargs(base_url=stack.gateway_url)
                    kwargs.pop("base_url", None)
                    # Our key always: a generated Authorization (from the bearer scheme) may not even
                    # be sendable ("Bearer " alone), and both ways to send a key are tested elsewhere.
                    generated = {
                        k: v for k, v in (kwargs.pop("headers", None) or {}).items() if k.lower() != "authorization"
                    }
                    headers = {**generated, **A}
                    response = http.request(
                        kwargs.pop("method"),
                        kwargs.pop("url"),
                        headers=headers,
                        params=kwargs.get("params"),
                        json=kwargs.get("json"),
                        content=kwargs.get("data"),
                    )
                    statuses[response.status_code] += 1
                    try:
                        case.validate_response(response, checks=checks, headers=headers)
                    except FailureGroup as exc:
                        key = (case.operation.label, response.status_code)
                        failures.setdefault(key, f"{key}: {str(exc)[:800]}")

                send()
    total = sum(statuses.values())
    print(f"fuzz: {total} requests, statuses {dict(sorted(statuses.items()))}")
    assert total >= 250, statuses  # 25 examples per operation and mode: ~600 requests
    assert not failures, "\n\n".join(list(failures.values())[:8])


_STATUSES = """
query Statuses($ids: [String!]) {
  runsOrError(filter: {runIds: $ids}) { ... on Runs { results { runId status } } }
}"""


def test_a_callers_burst_waits_behind_its_own_runs_not_in_front_of_another_caller(
    client: httpx.Client, stack: Stack
) -> None:
    """Issue 29, finding 5 against the real run queue: the owner tag's per-caller limit (2) holds
    A's third and fourth runs QUEUED while two of A's run, and B's request, started after A's
    burst, does not wait behind it."""
    samples: list[tuple[list[str], str]] = []

    def statuses() -> tuple[list[str], str]:
        """All five runs' statuses from one query: read one by one, a run read STARTED could
        end, and the queued ones start, before the last was read (a false 3 in flight)."""
        answer = httpx.post(
            f"{stack.dagster_url}/graphql",
            json={"query": _STATUSES, "variables": {"ids": [*burst_runs, other_run]}},
            timeout=30,
        ).json()["data"]["runsOrError"]["results"]
        status = {run["runId"]: run["status"] for run in answer}
        return [status[run_id] for run_id in burst_runs], status[other_run]

    def sample() -> bool:
        samples.append(statuses())
        mine, theirs = samples[-1]
        return all(state in ENDED for state in [*mine, theirs])

    def queue_seen() -> bool:
        sample()
        mine, theirs = samples[-1]
        in_flight = sum(state in ("STARTING", "STARTED") for state in mine)
        return in_flight == 2 and "QUEUED" in mine and theirs in ("STARTING", "STARTED")

    # The `gpu` pool is held while the runs are launched and the queue is looked at: a run of
    # instant stand-ins otherwise ends in well under a second, and two of A's had ended before
    # the five were launched (seen beside stress-ng), so the queue was never seen. Held, A's first
    # two wait in segment_jewelry, STARTED, and the queue's state stays until it is released.
    with held_pool(stack.env["DAGSTER_HOME"], waiting=0):
        burst = [client.post("/workflow/preprocess", json=BODY, headers=A).json()["workflowId"] for _ in range(4)]
        burst_runs = [launched_runs(stack, workflow)[0]["runId"] for workflow in burst]
        other = client.post("/workflow/preprocess", json=BODY, headers=B).json()["workflowId"]
        other_run = launched_runs(stack, other)[0]["runId"]
        wait_until(queue_seen, "two of A's runs started, A's others queued, B's started", timeout=120, every=0.05)
    wait_until(sample, "A's burst and B's request ended", timeout=240, every=0.05)
    in_flight = [sum(state in ("STARTING", "STARTED") for state in mine) for mine, _ in samples]
    assert max(in_flight) <= 2, samples
    # A's third run really waited in the queue while two of A's ran...
    assert any(count == 2 and "QUEUED" in mine for count, (mine, _) in zip(in_flight, samples, strict=True)), samples
    # ...and B's run started while A still had a run waiting: B went past A's queue.
    assert any(theirs in ("STARTING", "STARTED", "SUCCESS") and "QUEUED" in mine for mine, theirs in samples), samples
    assert samples[-1] == (["SUCCESS"] * 4, "SUCCESS"), samples[-1]
