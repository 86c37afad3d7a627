"""Faults of the processes that own the runs, on one stack: a run worker killed inside a `gpu` step,
the code server killed (kill -9 of its process group) and started again, the daemon and the
webserver restarted. Every run ends within a bound, and the next request completes. And a
SIGTERM to the gateway: the upload in flight becomes a request, open event streams end with a
`retry:` hint.

One `gpu` slot (GPU_POOL_SIZE=1), so a slot that stayed claimed by a dead run would wedge every
later request. SAM3's /segment (the `jewelry_mask` step, in the `gpu` pool) is held at a gate, so
each fault hits a run that holds the slot mid-step. The bounds below are what README "Faults and how
long they last" promises; the times measured are printed (-s).

The pool of one also serves the test that the `gpu` steps of concurrent requests never overlap
(it had a stack of its own in test_operations, and three runs of the classical image code).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devtools.stack import Stack
from gateway.event_streams import SHUTDOWN_RETRY_MS
from tests.support.e2e_flows import CUP, PHOTO, finished
from tests.support.e2e_stack import poll, run_worker, running_stack, runs_of, wait_until
from tests.support.gpu_pool import GPU_STEPS
from tests.support.otlp import Receiver, otlp_receiver
from tests.support.servers import Gate, gated_proxy, reference_server, service_urls, set_knobs

pytestmark = pytest.mark.e2e
BODY = {"originalImageBase64": PHOTO, "maskPoints": [CUP]}

# README, "Faults and how long they last": a dead run's `gpu` slot is free at most 15 s after
# the run ended (free_slots_after_run_end_seconds 5 s + the next monitoring poll, 5 s, on a quiet
# machine; the daemon's loop runs late under load: 11.1-13.8 s measured at load 12-22), and a run
# whose code server died is FAILED at most 5 s after the code server answers again (the
# launcher's health check at the next 5 s poll; 0.5-2.5 s measured). Our polls add up to a query.
SLOT_FREED_AFTER_RUN_END = 15.0
FAILED_AFTER_CODE_SERVER_BACK = 5.0
QUERY_ROOM = 1.0
# How long to wait for a request to complete after a fault: a timeout for the poll, not a
# promise (README gives measured times, 28-89 s on a loaded 2-core machine).
RECOVERED_WITHIN = 120.0

_GPU_SLOTS = '{ instance { concurrencyLimit(concurrencyKey: "gpu") { slotCount claimedSlots { runId stepKey } } } }'
_RUN = "query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status endTime } } }"
_HOLDER = """query Run($id: ID!) { runOrError(runId: $id) { ... on Run {
  runId status startTime endTime tags { key value } stepStats { stepKey status } } } }"""


@pytest.fixture(scope="module")
def traces() -> Iterator[Receiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def reference() -> Iterator[str]:
    """The model services: instant stand-ins (the runs' work is not what is tested here)."""
    with reference_server("--instant") as url:
        yield url


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory, traces: Receiver, reference: str) -> Iterator[tuple[Stack, Gate]]:
    with gated_proxy(reference, "/sam3/segment") as (proxy, gate):
        env = {key.upper(): value for key, value in service_urls(reference).items()}
        env |= {"SAM3_URL": f"{proxy}/sam3", "GPU_POOL_SIZE": "1", "LOCAL_BACKENDS": "instant"}
        env["REGENERATION_SENSOR_ENABLED"] = "false"
        # Run monitoring polls every second and frees a dead run's slots a second after its end
        # (dagster.yaml: 5 s and 5 s): each fault test waits for them; the mechanism is the same.
        env |= {"RUN_MONITORING_POLL_SECONDS": "1", "FREE_SLOTS_AFTER_RUN_END_SECONDS": "1"}
        # Tracing on (its spans are checked at the end), exported at once rather than every 5 s,
        # and a run's span written by its sensor within a second of its end (production: 5 s and
        # 5 s; the sensor's tick is what the trace test waited for).
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": traces.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        env |= {"SENSOR_LOOP_SECONDS": "1", "RUN_TRACE_SENSOR_INTERVAL_SECONDS": "1"}
        with running_stack(tmp_path_factory.mktemp("process-faults"), env) as stack:
            # The trace sensors run by default; stopped until the trace test starts them again,
            # as an operator would from the UI: ticking every second, their three evaluations
            # (daemon and code server) burned ~4 CPU-s per 30 s of the fault tests, which look
            # at no span.
            sensors = _trace_sensors(stack)
            assert {s["name"] for s in sensors} == set(TRACE_SENSORS), sensors
            assert all(s["defaultStatus"] == s["sensorState"]["status"] == "RUNNING" for s in sensors), sensors
            _set_trace_sensors(stack, running=False)
            yield stack, gate


_REPOSITORY = {"repositoryLocationName": "jewel_dagster", "repositoryName": "__repository__"}
TRACE_SENSORS = ("trace_runs_success", "trace_runs_failure", "trace_runs_canceled")  # defs/run_traces.py
_SENSORS = """query S($repo: RepositorySelector!) { sensorsOrError(repositorySelector: $repo) {
  ... on Sensors { results { id name defaultStatus
    sensorState { status ticks(limit: 1) { timestamp status } } } } } }"""
_ERROR = "__typename ... on PythonError { message }"
_START = "mutation S($s: SensorSelector!) { startSensor(sensorSelector: $s) { " + _ERROR + " } }"
_STOP = "mutation S($id: String!) { stopSensor(id: $id) { " + _ERROR + " } }"
_FORGET_CURSOR = "mutation S($s: SensorSelector!) { setSensorCursor(sensorSelector: $s) { __typename } }"


def _graphql(stack: Stack, query: str, **variables: Any) -> dict[str, Any]:
    body = httpx.post(f"{stack.dagster_url}/graphql", json={"query": query, "variables": variables}, timeout=30).json()
    assert "errors" not in body, body
    return dict(body["data"])


_TICKS = """query S($repo: RepositorySelector!) { sensorsOrError(repositorySelector: $repo) {
  ... on Sensors { results { name sensorState { status ticks(limit: 5) {
    timestamp status cursor runIds skipReason error { message } } } } } } }"""


def _trace_sensor_ticks(stack: Stack) -> list[dict[str, Any]]:
    """The run-trace sensors' last ticks (status, cursor, error): what a failed trace test shows."""
    results = _graphql(stack, _TICKS, repo=_REPOSITORY)["sensorsOrError"]["results"]
    return [s for s in results if s["name"] in TRACE_SENSORS]


def _trace_sensors(stack: Stack) -> list[dict[str, Any]]:
    """The run-trace sensors, their default and current status and their latest tick."""
    results = _graphql(stack, _SENSORS, repo=_REPOSITORY)["sensorsOrError"]["results"]
    return [s for s in results if s["name"] in TRACE_SENSORS]


def _set_trace_sensors(stack: Stack, *, running: bool) -> None:
    """Start or stop the run-trace sensors (the UI's toggle), and wait until Dagster says so.

    A started one without its cursor, and once a tick since has ended: that first tick sets the
    cursor to the latest run ending, so it reports the runs that end after it; the fault tests'
    runs, which ended while it was stopped, are skipped instead of worked through at 5 a tick. A
    tick is recorded STARTED before its evaluation (dagster/_daemon/sensor.py, `create_tick`): a
    run that ends before that evaluation reads the latest run ending becomes the cursor's start
    and is never reported. That is the likely cause of stop 41's CI failure, under load: the
    trace test's run span never came (not reproduced in 6 runs of the file beside stress-ng;
    the failure message now shows the sensors' ticks and cursors).

    A stop can be undone by the daemon: a tick writes back a sensor's state it read before,
    status included (dagster/_daemon/sensor.py, `state.with_data` at a tick's start and end), so
    a stop landing in between is overwritten with RUNNING (stop 41's CI: "the trace sensors
    stopped did not happen within 60 s"). Each poll sends the toggle again to a sensor still in
    the other status, as an operator would click again.

    A toggle can also fail outright: the fourteenth session's first clean-clone CI had the
    fixture's first stop answer PythonError, the sensors with no tick yet (its message was not
    asked for). The likely cause, read in Dagster's `stop_sensor`: a sensor running by default has
    no stored state until the daemon's first tick adds one, and a stop in that moment adds one
    too, so one of the two inserts fails. A failed toggle is sent again at the next poll, as any
    other that did not hold; the wait's failure names the last error."""
    since = time.time()
    status = "RUNNING" if running else "STOPPED"
    errors: list[str] = []  # the toggles' PythonErrors, last last

    def toggle(sensor: dict[str, Any]) -> None:
        selector = {**_REPOSITORY, "sensorName": sensor["name"]}
        if running:
            answer = _graphql(stack, _START, s=selector)["startSensor"]
        else:
            answer = _graphql(stack, _STOP, id=sensor["id"])["stopSensor"]
        if answer["__typename"] == "PythonError":
            errors.append(f"{sensor['name']}: {answer['message']}")
            return
        assert answer["__typename"] in ("Sensor", "StopSensorMutationResult"), answer

    for sensor in _trace_sensors(stack):
        if running:
            selector = {**_REPOSITORY, "sensorName": sensor["name"]}
            assert _graphql(stack, _FORGET_CURSOR, s=selector)["setSensorCursor"]["__typename"] == "Sensor"
        toggle(sensor)

    held_since: list[float] = []  # when every sensor was first seen in the wanted status, this time

    def settled() -> bool:
        sensors = _trace_sensors(stack)
        for sensor in sensors:
            if sensor["sensorState"]["status"] != status:
                toggle(sensor)
                held_since.clear()
        states = [s["sensorState"] for s in sensors]
        if len(states) != len(TRACE_SENSORS) or any(s["status"] != status for s in states):
            return False
        if running:  # a tick since the start that has ended: its cursor (the latest run ending) is set
            latest = [s["ticks"][0] if s["ticks"] else None for s in states]
            return all(tick and tick["timestamp"] >= since and tick["status"] != "STARTED" for tick in latest)
        # A stop holds once it outlived the daemon's loops that had read the state before it
        # (SENSOR_LOOP_SECONDS=1: two seconds are two whole loops).
        held_since[:] = held_since or [time.monotonic()]
        return time.monotonic() - held_since[0] >= 2

    try:
        wait_until(settled, f"the trace sensors {'started' if running else 'stopped'}", 60)
    except AssertionError as late:
        raise AssertionError(f"{late}; {len(errors)} toggles failed, the last: {errors[-1:]}") from None


def _gpu_claims(stack: Stack) -> list[str]:
    """Run ids holding a `gpu` slot, as the Dagster UI (Deployment > Concurrency) shows them."""
    body = httpx.post(f"{stack.dagster_url}/graphql", json={"query": _GPU_SLOTS}, timeout=30).json()
    limit = body["data"]["instance"]["concurrencyLimit"]
    assert limit["slotCount"] == 1
    return [slot["runId"] for slot in limit["claimedSlots"]]


def _run(stack: Stack, run_id: str) -> dict[str, Any]:
    """A run's status and end time (Unix seconds, None while it runs), from Dagster."""
    body = {"query": _RUN, "variables": {"id": run_id}}
    return httpx.post(f"{stack.dagster_url}/graphql", json=body, timeout=30).json()["data"]["runOrError"]


def _start_held_in_gpu_step(client: httpx.Client, stack: Stack, gate: Gate) -> tuple[str, str]:
    """POST a request and wait until its run holds the `gpu` slot, held at the gate; (workflow, run id)."""
    gate.rearm()
    started = client.post("/workflow/start", json=BODY)
    assert started.status_code == 200, started.text
    workflow = started.json()["workflowId"]
    gate.wait_entered(timeout=120)
    (run,) = runs_of(stack.dagster_url, workflow)
    assert _gpu_claims(stack) == [run["runId"]]
    return workflow, run["runId"]


@contextlib.contextmanager
def _statuses_seen(stack: Stack, workflow: str) -> Iterator[list[str]]:
    """Every status GET answers for `workflow`, about every 0.2 s, while the block runs: what a
    frontend polling through a fault sees (a check made once the request recovered cannot see a
    FAILED said in between)."""
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=stack.gateway_url, timeout=30) as watcher:
            while not done.is_set():
                seen.append(watcher.get(f"/workflow/{workflow}").json()["status"])
                done.wait(0.2)

    watching = threading.Thread(target=watch, daemon=True)
    watching.start()
    try:
        yield seen
    finally:
        done.set()
        watching.join(timeout=30)


def _gpu_holders(stack: Stack) -> list[dict[str, Any]]:
    """The runs holding a `gpu` slot, each with its status, tags and steps: what a test that timed
    out waiting for the pool shows (a run held the only slot for minutes once, under load in CI)."""
    return [
        httpx.post(f"{stack.dagster_url}/graphql", json={"query": _HOLDER, "variables": {"id": run_id}}, timeout=30)
        .json()["data"]["runOrError"]
        for run_id in _gpu_claims(stack)
    ]


def _recovers(client: httpx.Client, stack: Stack, workflow: str, since: float, what: str) -> list[dict[str, Any]]:
    """The request ends COMPLETED through one retry, in time; GET says RUNNING until then."""
    try:
        states = poll(client, workflow, finished, timeout=RECOVERED_WITHIN)
    except AssertionError as late:
        runs = [(r["runId"], r["status"]) for r in runs_of(stack.dagster_url, workflow)]
        raise AssertionError(f"{late}; its runs {runs}; the gpu slot's holders {_gpu_holders(stack)}") from None
    took = time.monotonic() - since
    print(f"\n{what}: COMPLETED {took:.1f} s after the fault")
    assert [s["status"] for s in states if s["status"] != "RUNNING"] == ["COMPLETED"], states[-1]
    runs = runs_of(stack.dagster_url, workflow)
    assert sorted(r["status"] for r in runs) == ["FAILURE", "SUCCESS"], runs
    retry = next(r for r in runs if r["status"] == "SUCCESS")
    assert {"key": "dagster/retry_number", "value": "1"} in retry["tags"]
    return runs


def _start(client: httpx.Client) -> str:
    started = client.post("/workflow/start", json=BODY)
    assert started.status_code == 200, started.text
    return str(started.json()["workflowId"])


def _start_once_accepted(client: httpx.Client) -> str:
    """POST as a client that honours 503 + Retry-After would: right after the code server restarted,
    the webserver reloads its code location for a few seconds."""
    answers = []
    deadline = time.monotonic() + RECOVERED_WITHIN
    while time.monotonic() < deadline:
        started = client.post("/workflow/start", json=BODY)
        answers.append(started.status_code)
        if started.status_code == 200:
            print(f"\nafter the code server restart: {answers}")
            return str(started.json()["workflowId"])
        assert started.status_code == 503 and started.headers.get("Retry-After"), started.text
        time.sleep(0.5)
    raise AssertionError(f"no request was accepted within {RECOVERED_WITHIN:.0f} s: {answers}")


def _completes(client: httpx.Client, workflow: str) -> None:
    final = poll(client, workflow, finished, timeout=RECOVERED_WITHIN)[-1]
    assert final["status"] == "COMPLETED", final


# The steps held to the `gpu` pool on this stack, the A100 server's refinement among them
# (inside `generate_images` since issue 28); named by the test (tests/support/gpu_pool.py).
POOLED_STEPS = GPU_STEPS
# Added to every SAM3 call: both pooled steps make one (`segment_jewelry` the mask,
# `generate_images` the metrics), so each of those steps lasts at least this long with the CPU
# idle, and the steps of requests launched together would overlap if the pool did not hold them
# apart, however loaded the machine. (Until issue 27: 1.5 s, then 0.75 s, on the A100's calls
# too, all serialised by the pool; the second and third runs start within 0.1 s of each other.
# With GPU_POOL_SIZE=3 the test still fails at 0.5 s on SAM3 alone: "segment_jewelry of ...
# overlaps segment_jewelry of ...", by 1.1 s.)
GPU_CALL_SECONDS = 0.5
_POOLED_CALLS = ("sam3/segment",)


def test_gpu_steps_of_three_requests_never_overlap_with_a_pool_of_one(
    faults: tuple[Stack, Gate], reference: str
) -> None:
    stack, gate = faults
    gate.release.set()
    set_knobs(reference, latency=dict.fromkeys(_POOLED_CALLS, GPU_CALL_SECONDS))
    try:
        with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
            ids = [_start(client) for _ in range(3)]
            for workflow in ids:
                assert poll(client, workflow, finished, timeout=180)[-1]["status"] == "COMPLETED"
    finally:
        set_knobs(reference)
    intervals, spans = [], []
    for workflow in ids:
        (run,) = runs_of(stack.dagster_url, workflow)
        steps = run["stepStats"]
        spans.append((min(s["startTime"] for s in steps), max(s["endTime"] for s in steps)))
        for step in steps:
            if step["stepKey"] in POOLED_STEPS:
                intervals.append((step["startTime"], step["endTime"], workflow, step["stepKey"]))
    assert len(intervals) == 3 * len(POOLED_STEPS), intervals  # every pooled step ran once a request
    # Runs were going at once (one began before another ended): only the pool kept their steps apart.
    spans.sort()
    assert any(start < end for (_, end), (start, _) in zip(spans, spans[1:], strict=False)), spans
    intervals.sort()
    for (_, end, run_a, step_a), (start, _, run_b, step_b) in zip(intervals, intervals[1:], strict=False):
        assert start >= end, f"{step_a} of {run_a} overlaps {step_b} of {run_b}"
    assert _gpu_claims(stack) == []


def test_a_run_worker_killed_in_a_gpu_step_gives_the_slot_back(faults: tuple[Stack, Gate]) -> None:
    stack, gate = faults
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        workflow, dead_run = _start_held_in_gpu_step(client, stack, gate)
        worker = run_worker(stack)
        assert worker is not None, "the run worker process was not found mid-run"
        with _statuses_seen(stack, workflow) as seen:  # what a frontend polling through the fault sees
            os.kill(worker, signal.SIGKILL)
            killed = time.monotonic()
            gate.release.set()
            _slot_freed_and_recovered(client, stack, workflow, dead_run, killed)
        assert seen and set(seen) <= {"RUNNING", "COMPLETED"}, f"GET said {sorted(set(seen))} through the fault"
        assert _gpu_claims(stack) == []


def _slot_freed_and_recovered(client: httpx.Client, stack: Stack, workflow: str, dead_run: str, killed: float) -> None:
    """The dead run's gpu slot is freed in time, then its retry completes the request."""
    wait_until(lambda: _run(stack, dead_run)["endTime"], "the dead run ended", 60)
    wait_until(lambda: dead_run not in _gpu_claims(stack), "the dead run's gpu slot freed", 60)
    freed = time.time()
    after_end = freed - _run(stack, dead_run)["endTime"]
    since_kill = time.monotonic() - killed
    print(
        f"\nworker killed: gpu slot free {since_kill:.1f} s after the kill, {after_end:.1f} s after the run ended"
    )
    assert after_end <= SLOT_FREED_AFTER_RUN_END + QUERY_ROOM, f"slot freed {after_end:.1f} s after the run ended"
    # With one slot, the retry can only run its gpu steps on the slot the dead run held.
    _recovers(client, stack, workflow, killed, "worker killed")


def test_a_killed_code_server_fails_its_runs_and_they_are_retried(faults: tuple[Stack, Gate]) -> None:
    stack, gate = faults
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        workflow, dead_run = _start_held_in_gpu_step(client, stack, gate)
        stack.kill("code_server")  # its run workers are in its process group: they die with it
        killed = time.monotonic()
        assert client.get(f"/workflow/{workflow}").json()["status"] == "RUNNING"
        stack.start_code_server()  # returns once it answers
        back = time.time()
        wait_until(lambda: _run(stack, dead_run)["status"] == "FAILURE", "the dead run FAILED", 60)
        failed_after = _run(stack, dead_run)["endTime"] - back
        print(f"\ncode server killed: run FAILED {failed_after:.1f} s after the code server answered again")
        assert failed_after <= FAILED_AFTER_CODE_SERVER_BACK + QUERY_ROOM, f"FAILED {failed_after:.1f} s after"
        following = _start_once_accepted(client)  # the next request, on the new code server
        gate.release.set()
        runs = _recovers(client, stack, workflow, killed, "code server killed")
        failed = next(r for r in runs if r["runId"] == dead_run)
        assert failed["status"] == "FAILURE"
        assert dead_run not in _gpu_claims(stack)
        _completes(client, following)


def test_daemon_and_webserver_restarts_mid_run_lose_no_run(faults: tuple[Stack, Gate]) -> None:
    """One held run across both restarts (a held run per restart cost the suite ~25 s more)."""
    stack, gate = faults
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        workflow, _ = _start_held_in_gpu_step(client, stack, gate)
        stack.stop(("daemon",))
        queued = _start(client)  # no daemon: it waits in the queue
        assert client.get(f"/workflow/{queued}").json()["status"] == "RUNNING"
        wait_until(
            lambda: [r["status"] for r in runs_of(stack.dagster_url, queued)] == ["QUEUED"],
            "its run QUEUED while no daemon runs",
            30,
        )
        stack.start_daemon()
        stack.stop(("webserver",))
        # Status comes from the run storage: GET goes on; a launch needs the webserver: 503.
        assert client.get(f"/workflow/{workflow}").json()["status"] == "RUNNING"
        refused = client.post("/workflow/start", json=BODY)
        assert refused.status_code == 503 and refused.headers.get("Retry-After"), refused.text
        stack.start_webserver()
        restarted = time.monotonic()
        following = _start(client)
        gate.release.set()
        for each in (workflow, queued, following):
            _completes(client, each)
            assert [r["status"] for r in runs_of(stack.dagster_url, each)] == ["SUCCESS"]
        print(f"\ndaemon and webserver restarted: 3 requests COMPLETED {time.monotonic() - restarted:.1f} s after")


def test_sigterm_on_the_gateway_finishes_requests_in_flight_and_closes_event_streams(
    faults: tuple[Stack, Gate],
) -> None:
    stack, gate = faults
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        workflow, _ = _start_held_in_gpu_step(client, stack, gate)
    lines: list[str] = []
    progress_seen = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{stack.gateway_url}/workflow/{workflow}/events", timeout=60) as events:
            for line in events.iter_lines():
                lines.append(line)
                if line == "event: progress":
                    progress_seen.set()

    body = json.dumps(BODY).encode()
    half_sent, send_rest = threading.Event(), threading.Event()

    def upload() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        half_sent.set()
        send_rest.wait(60)
        yield body[len(body) // 2 :]

    answer: list[httpx.Response] = []

    def post() -> None:
        url, headers = f"{stack.gateway_url}/workflow/start", {"Content-Type": "application/json"}
        answer.append(httpx.post(url, content=upload(), headers=headers, timeout=60))

    poster = threading.Thread(target=post)
    listener = threading.Thread(target=listen)
    listener.start()
    assert progress_seen.wait(30), lines
    poster.start()
    assert half_sent.wait(30)
    gateway = stack.processes.pop("gateway")
    gateway.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    listener.join(timeout=10)
    closed_after = time.monotonic() - signalled
    assert not listener.is_alive(), "the event stream stayed open after SIGTERM"
    print(f"\ngateway SIGTERM: event stream closed {closed_after:.2f} s after the signal")
    assert closed_after < 1.0, f"closed {closed_after:.2f} s after the signal (docs/operations.md: within 1 s)"
    assert f"retry: {SHUTDOWN_RETRY_MS}" in lines and "event: shutdown" in lines, lines
    assert gateway.poll() is None, "the gateway exited with an upload in flight"
    send_rest.set()
    poster.join(timeout=60)
    assert answer and answer[0].status_code == 200, answer and answer[0].text
    gateway.wait(timeout=30)  # and then it stops
    stack.start_gateway()
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        # The run went on while no gateway was there, and the new gateway finds it where it is.
        back = client.get(f"/workflow/{workflow}")
        assert back.status_code == 200 and back.json()["status"] == "RUNNING", back.text
        assert back.json()["currentStep"] == "GENERATING_MASK", back.json()
        gate.release.set()
        _completes(client, workflow)
        assert [r["status"] for r in runs_of(stack.dagster_url, workflow)] == ["SUCCESS"]  # the same run
        _completes(client, answer[0].json()["workflowId"])  # the upload in flight became a request


def test_one_trace_holds_the_start_call_the_model_calls_and_the_run(
    faults: tuple[Stack, Gate], traces: Receiver
) -> None:
    stack, gate = faults
    gate.release.set()
    _set_trace_sensors(stack, running=True)
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        workflow = _start(client)
        _completes(client, workflow)
    (run,) = runs_of(stack.dagster_url, workflow)

    def trace_of_the_request() -> list[Any] | None:
        mine = [s for s in traces.received() if s.attributes.get("workflow.id") == workflow]
        ended = [s for s in mine if s.name == f"run {run['jobName']}"]
        return mine if ended and any(s.service == "jewel-gateway" for s in mine) else None

    try:
        spans = wait_until(trace_of_the_request, "the request's spans at the collector", 60)
    except AssertionError as missing:  # say which span is missing and what the sensors did
        names = sorted({(s.service, s.name) for s in traces.received() if s.attributes.get("workflow.id") == workflow})
        raise AssertionError(f"{missing}; run {run}; its spans {names}; sensors {_trace_sensor_ticks(stack)}") from None
    (start,) = [s for s in spans if s.service == "jewel-gateway"]
    assert start.name == f"start {run['jobName']}"
    calls = {s.name for s in spans if s.attributes.get("jewel.service")}
    assert {"ImageManipulator POST /resize", "Segmenter POST /segment", "FluxGenerator POST /generate"} <= calls, calls
    for span in spans:
        if span is not start:  # every pipeline span is the start span's child, in its trace
            assert (span.trace_id, span.parent_span_id) == (start.trace_id, start.span_id), span
            assert span.attributes["dagster.run_id"] == run["runId"]
    (run_span,) = [s for s in spans if s.name.startswith("run ")]
    assert run_span.attributes["dagster.status"] == "SUCCESS"
