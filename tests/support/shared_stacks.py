"""Stacks shared by the test files that need the same settings.

A stack takes 15-25 s of four processes to start (more on a busy machine): files that ask for
the same settings (a `SharedSettings`) get the same running stack instead of one each. Each
xdist worker keeps at most one stack at a time (the next settings stop the one before; the
session's end stops the last). A `SharedSettings` names its files: the scheduler
(tests/conftest.py) sends them to the same worker one after another, so the stack starts once in
the session (a file that uses a shared stack without being named fails at collection).

A file's tests must then tolerate earlier requests on the stack (look only at their own
workflows), and must not break its processes: those start a stack of their own. A test that
stops one to restart it (the gateway, in test_live) starts it again whatever happens, and a
process a file adds (another gateway) is stopped when the file is done; a stack that lost one
of the processes it started with is not handed out again (a new one starts).
Between files, `settle` ends what a file left running, so no run burns a core for the next.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import httpx

from devtools.stack import Stack
from gateway.starts import mark_cancelled, read_start
from jewel_dagster.resources.blob_store import LocalBlobStore
from jewel_dagster.storage_layout import PENDING_START_PREFIX as PENDING_PREFIX
from tests.support.e2e_stack import TWO_CALLERS, running_stack

_UNFINISHED = """
{ runsOrError(filter: {statuses: [QUEUED, NOT_STARTED, STARTING, STARTED, CANCELING]}) {
    ... on Runs { results { runId status } } } }"""

# Marked CANCELED at once (after a cancel to the queue or the run's worker, as Dagster does for
# that policy): the plain cancel refuses NOT_STARTED and STARTING runs.
_TERMINATE = """
mutation Terminate($runIds: [String!]!) {
  terminateRuns(runIds: $runIds, terminatePolicy: MARK_AS_CANCELED_IMMEDIATELY) { __typename }
}"""


@dataclass(frozen=True)
class SharedSettings:
    """Settings (extra environment of the stack) that several test files share, by name."""

    name: str
    env: Mapping[str, str]
    files: tuple[str, ...]  # the test files that use them, from the repository's root


class SharedStacks:
    """The running stack of this worker, started for some settings; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._started = 0
        self._running: tuple[SharedSettings, AbstractContextManager[Stack], Stack] | None = None
        self._processes: frozenset[str] = frozenset()  # what the running stack started with

    @property
    def running(self) -> SharedSettings | None:
        return self._running[0] if self._running else None

    def get(self, settings: SharedSettings) -> Stack:
        if self._running is not None:
            current, _, stack = self._running
            alive = self._processes <= set(stack.processes) and all(p.poll() is None for p in stack.processes.values())
            if current == settings and alive:
                return stack
            self.close()
        self._started += 1
        started = running_stack(self._root / f"{settings.name}-{self._started}", dict(settings.env))
        stack = started.__enter__()
        self._running = (settings, started, stack)
        self._processes = frozenset(stack.processes)
        return stack

    def close(self) -> None:
        if self._running is not None:
            _, started, _ = self._running
            self._running = None
            started.__exit__(None, None, None)


def unfinished_runs(dagster_url: str) -> dict[str, str]:
    """Run id -> status of the runs Dagster has not ended (queued, starting, started, canceling)."""
    response = httpx.post(f"{dagster_url}/graphql", json={"query": _UNFINISHED}, timeout=30)
    return {run["runId"]: run["status"] for run in response.json()["data"]["runsOrError"]["results"]}


def pending_starts(stack: Stack) -> list[str]:
    """Starts the gateway accepted and has not launched (START_IN_BACKGROUND) nor cancelled yet:
    runs to come."""
    store = LocalBlobStore(root=stack.env["LOCAL_BLOB_ROOT"])
    pending = []
    for record in (Path(store.root) / store.container / PENDING_PREFIX).glob("*.json"):
        start = read_start(store, record.stem)
        if start is not None and start.state == "pending":
            pending.append(record.stem)
    return pending


def settle(stack: Stack, timeout: float = 120.0) -> None:
    """End what a file left going, so that it takes neither the CPU nor the run queue's places
    of the tests after it: starts not launched yet are cancelled (as a caller's cancel does:
    their gateway then drops them instead of launching them one after another, seconds each
    on a busy machine), and every unfinished run is cancelled. The fuzz tests leave dozens."""
    store = LocalBlobStore(root=stack.env["LOCAL_BLOB_ROOT"])
    deadline = time.monotonic() + timeout
    while True:
        pending = pending_starts(stack)
        for workflow_id in pending:
            mark_cancelled(store, workflow_id)
        runs = unfinished_runs(stack.dagster_url)
        if not runs and not pending:
            return
        if runs:
            variables = {"runIds": list(runs)}
            httpx.post(f"{stack.dagster_url}/graphql", json={"query": _TERMINATE, "variables": variables}, timeout=30)
        if time.monotonic() > deadline:
            raise AssertionError(f"runs still going {timeout:.0f} s after their cancel: {runs}; starts: {pending}")
        time.sleep(0.5)


def shared_stack(stacks: SharedStacks, settings: SharedSettings) -> Iterator[Stack]:
    """The body of a file's module fixture: the shared stack, settled when the file is done."""
    stack = stacks.get(settings)
    yield stack
    settle(stack)


# The settings the files share.
# The embedded default's settings but the instant image backends and no re-generation sensor,
# with webhooks on (test_live; the other files send no webhook URL): the gateway's contract, its
# events, webhooks, artifacts, CLI and page, none of which needs the classical stand-ins' pixels
# (a classical run cost ~2.5 CPU-s more than an instant one, and this stack ran a dozen). The
# classical stand-ins' pixels end to end: `make run` itself (tests/e2e/test_make_run.py). The
# instant Flux image fails the fidelity check by design, so the sensor would re-generate every
# request here (a cancel of a COMPLETED request then cancelled its re-generation: seen under load).
LIVE_STACK = SharedSettings(
    "stack-live",
    {
        "LOCAL_BACKENDS": "instant",
        "REGENERATION_SENSOR_ENABLED": "false",
        # Each stand-in call takes 0.3 s, asleep: the page's ETA test needs steps whose medians
        # add up to a countdown of more than a second (an instant step's median is ~0.05 s).
        "LOCAL_INSTANT_CALL_SECONDS": "0.3",
        "WEBHOOK_SECRET": "test-webhook-secret",
        "WEBHOOK_ALLOW_PRIVATE": "true",  # the test's receivers listen on loopback
        "WEBHOOK_BACKOFF_SECONDS": "0.3",
        "WEBHOOK_POLL_SECONDS": "0.5",
        # The page's ETA test looks for the label of a step running, and a step here may take
        # less than the 1 s default between two snapshots of the queue.
        "QUEUE_ESTIMATE_SECONDS": "0.25",
    },
    (
        "tests/e2e/test_gateway.py",
        "tests/e2e/test_live.py",
    ),
)
# Two callers with API keys, no rate limit in the way, no background runs, instant image
# backends (ownership, idempotency and fuzzing look at who may see what, not at pixels;
# test_gateway_launches at concurrent launches; test_artifacts and test_stroke_limits at the real
# local refiner's painting, which the instant backends keep).
TWO_CALLERS_STACK = SharedSettings(
    "stack-two-callers",
    {**TWO_CALLERS, "LOCAL_BACKENDS": "instant"},
    (
        "tests/e2e/test_artifacts.py",
        "tests/e2e/test_fuzz_sequences.py",
        "tests/e2e/test_gateway_launches.py",
        "tests/e2e/test_ownership.py",
        "tests/e2e/test_security.py",
        "tests/e2e/test_stroke_limits.py",
    ),
)
# Instant image backends, no re-generation sensor, and a run queue the daemon polls only every
# 600 s: a run starts from its wake (test_run_queue), and each run worker is one of this file's
# (test_warm_code_server counts them). The local refiner holds a core in C for 10 minutes
# (test_cancel_in_c cancels it there): the other files send no brush strokes, so never call it.
WOKEN_QUEUE_STACK = SharedSettings(
    "stack-woken-queue",
    {
        "LOCAL_BACKENDS": "instant",
        "RUN_QUEUE_POLL_SECONDS": "600",
        "REGENERATION_SENSOR_ENABLED": "false",
        "LOCAL_REFINE_BUSY_SECONDS": "600",
    },
    ("tests/e2e/test_cancel_in_c.py", "tests/e2e/test_run_queue.py", "tests/e2e/test_warm_code_server.py"),
)
# Test file -> the name of the shared stack it uses.
GROUP_OF_FILE = {
    file: settings.name for settings in (LIVE_STACK, TWO_CALLERS_STACK, WOKEN_QUEUE_STACK) for file in settings.files
}
