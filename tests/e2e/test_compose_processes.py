"""docker-compose.yml as processes: each service of our image runs its own `command` with the
environment compose gives it, against PostgreSQL and Azurite (tests/support/compose.py says how).

Set up as the README says: `cp .env.example .env`, then edit `.env` (API keys, a secret, and here
a container name, to see that `.env` reaches the services). Then a request completes through the
gateway, Dagster's GraphQL lists its run, and a step's captured stderr reads back through the
webserver from Azure Blob (Azurite): the code server's container wrote it, the webserver's read it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.storage.blob import ContainerClient

from devtools.stack import REPO_ROOT, wait_for_http, wait_for_port
from tests.support.compose import LoopbackNetwork, listen_port, load_compose, service_process
from tests.support.e2e_flows import full_request_completes
from tests.support.e2e_stack import runs_of
from tests.support.infra import azurite, postgres_database

pytestmark = pytest.mark.e2e

API_KEY = "compose-test-key"
CONTAINER = f"compose-{uuid.uuid4().hex[:8]}"  # edited into .env: proves the services read .env
# Started in compose's depends_on order; each waits for what its health check waits for.
ORDER = ["reference-server", "code-server", "webserver", "daemon", "gateway"]
_LOGS = """
query Logs($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) { ... on EventConnection { events { __typename
    ... on LogsCapturedEvent { fileKey stepKeys } } } }
}"""
_CAPTURED = """
query Captured($runId: ID!, $fileKey: String!) {
  runOrError(runId: $runId) { ... on Run { capturedLogs(fileKey: $fileKey) { stdout stderr } } }
}"""


def _project(root: Path) -> Path:
    """The operator's checkout after `cp .env.example .env` and editing .env."""
    project = root / "project"
    project.mkdir()
    shutil.copy(REPO_ROOT / ".env.example", project / ".env.example")
    dotenv = (REPO_ROOT / ".env.example").read_text()
    edits = {
        "GATEWAY_API_KEYS": API_KEY,
        "GATEWAY_SECRET": "a-long-random-compose-test-secret",
        "AZURE_CONTAINER_NAME": CONTAINER,
        "POSTGRES_PASSWORD": "unused-here",  # the machine's PostgreSQL: tests/support/compose.py
    }
    lines = [f"{line.split('=')[0]}={edits[line.split('=')[0]]}" if line.split("=")[0] in edits else line
             for line in dotenv.splitlines()]  # fmt: skip
    (project / ".env").write_text("\n".join(lines) + "\n")
    return project


def _start(name: str, argv: list[str], env: dict[str, str], cwd: Path, logs: Path) -> subprocess.Popen[bytes]:
    with open(logs / f"{name}.log", "ab") as out:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@contextmanager
def _stopped_together() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """The services started (name -> process), each sent SIGTERM at the end at once, then given
    10 s in all to exit before SIGKILL (compose's default stop_grace_period): one after another,
    each waited for up to 15 s before the next was signalled, the five took 18-26 s of the file's
    wall time (alone, on a loaded machine); one of them runs into the grace even when signalled
    together (teardown 16.5 s with 15 s)."""
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        yield processes
    finally:
        for process in processes.values():
            process.terminate()
        deadline = time.monotonic() + 10
        for process in processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(name: str, port: int, process: subprocess.Popen[bytes]) -> None:
    """What each service's compose health check waits for."""
    if name == "reference-server":
        wait_for_http(f"http://127.0.0.1:{port}/sam3/health", 120, process)
    elif name == "webserver":
        wait_for_http(f"http://127.0.0.1:{port}/server_info", 180, process)
    elif name == "gateway":
        wait_for_http(f"http://127.0.0.1:{port}/health", 120, process)
    else:
        wait_for_port("127.0.0.1", port, 180, process)


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("compose")
    logs = root / "logs"
    logs.mkdir()
    compose = load_compose()
    services = compose["services"]
    ours = [name for name, service in services.items() if "build" in service]
    assert sorted(ours) == sorted(ORDER), ours
    project = _project(root)
    with ExitStack() as stack:
        pg_url = stack.enter_context(postgres_database())
        connection = stack.enter_context(azurite(root / "azurite"))
        network = LoopbackNetwork()
        # postgres: the machine's server, with a database of this test's own (user postgres, trust).
        network.add("postgres", 5432, 5432)
        network.postgres = {"user": "postgres", "password": "unused", "database": pg_url.rsplit("/", 1)[1]}
        blob_port = int(connection.split("BlobEndpoint=http://127.0.0.1:")[1].split("/")[0])
        network.add("azurite", listen_port(services["azurite"]) or 10000, blob_port)
        for name in ours:
            own = listen_port(services[name])
            if own is not None:  # the daemon listens on nothing
                network.add(name, own)
        processes = stack.enter_context(_stopped_together())
        for name in ORDER:
            argv, env, cwd = service_process(name, services[name], network, project, root)
            process = processes[name] = _start(name, argv, env, cwd, logs)
            own = listen_port(services[name])
            if own is not None:
                _wait_ready(name, network.ports[(name, own)], process)
        yield {
            "gateway": f"http://127.0.0.1:{network.ports[('gateway', 8001)]}",
            "dagster": f"http://127.0.0.1:{network.ports[('webserver', 3000)]}",
            "azurite": connection,
        }


def test_a_request_completes_through_the_compose_services(compose_stack: dict[str, Any]) -> None:
    assert httpx.post(f"{compose_stack['gateway']}/workflow/start", json={}, timeout=30).status_code == 401
    with httpx.Client(base_url=compose_stack["gateway"], timeout=30, headers={"X-API-Key": API_KEY}) as client:
        final = full_request_completes(client)
    assert final["result"]["imageUri"].startswith(f"azure://{CONTAINER}/requests/"), "the .env edit reached them"
    (run,) = runs_of(compose_stack["dagster"], final["workflowId"])
    assert run["status"] == "SUCCESS"

    # Step logs: captured by the code server's run worker into Azurite, read by the webserver.
    events = httpx.post(
        f"{compose_stack['dagster']}/graphql", json={"query": _LOGS, "variables": {"runId": run["runId"]}}, timeout=30
    ).json()["data"]["logsForRun"]["events"]
    captured = [e for e in events if e["__typename"] == "LogsCapturedEvent"]
    assert captured and "segment_jewelry" in {k for e in captured for k in e["stepKeys"] or []}, captured
    answer = httpx.post(
        f"{compose_stack['dagster']}/graphql",
        json={"query": _CAPTURED, "variables": {"runId": run["runId"], "fileKey": captured[0]["fileKey"]}},
        timeout=30,
    ).json()
    stderr = answer["data"]["runOrError"]["capturedLogs"]["stderr"] or ""
    # The run's log lines as compose writes them (LOG_FORMAT=json: one JSON object a line).
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert {"step": "segment_jewelry", "event": "STEP_START"} in [
        {"step": line.get("step"), "event": line.get("event")} for line in lines
    ], stderr[-2000:]
    container = ContainerClient.from_connection_string(compose_stack["azurite"], CONTAINER)
    names = [b.name for b in container.list_blobs(name_starts_with="compute-logs/")]
    assert any(run["runId"] in name for name in names), names[:20]
