"""Scale-out: two gateway replicas, two Celery workers (--concurrency 2), Redis, PostgreSQL, Azurite.

One stack for the module (the tests run in order): first REQUESTS sent alternately to both
gateways, a third of them sent again at the same moment to the other gateway with the same
Idempotency-Key; then a worker killed with SIGKILL mid-run. Instant backends: what is tested is
the orchestration, not the images (tests/e2e/test_production.py checks those on PostgreSQL and
Azurite).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from devtools.stack import Stack, free_port, temporary_stack
from jewel_dagster.contract import WORKER_TAG
from jewel_dagster.resources.blob_store import AzureBlobStore, BlobStore
from jewel_dagster.runtime.instance_plugins.celery_runs import DEAD_AFTER_SECONDS
from jewel_dagster.storage_layout import webhook_record_path as record_path
from tests.support.e2e_flows import CUP, PHOTO
from tests.support.e2e_stack import runs_of, wait_until
from tests.support.infra import azurite, postgres_database, redis_url
from tests.support.metrics import samples, value
from tests.support.receivers import Receiver, webhook_receiver

pytestmark = [pytest.mark.e2e, pytest.mark.long]  # `make test-long`: ~2 minutes of its own
# The acceptance run: 60 requests (~110 s here on 2 cores while nothing else runs).
REQUESTS = int(os.environ.get("SCALEOUT_REQUESTS", "60"))
MONITOR_SECONDS = 2  # run_monitoring.poll_interval_seconds here; production: 10
ENDED = ("COMPLETED", "FAILED", "CANCELLED")
WEBHOOK_POLL_SECONDS = "0.5"


class ScaleOut:
    def __init__(self, stack: Stack, gateways: list[str], receiver: Receiver, store: BlobStore) -> None:
        self.stack, self.gateways, self.receiver, self.store = stack, gateways, receiver, store


@pytest.fixture(scope="module")
def scaleout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleOut]:
    root = tmp_path_factory.mktemp("scaleout")
    queue = f"jewel-test-{uuid.uuid4().hex[:8]}"  # the broker may be shared: a queue of our own
    with (
        postgres_database() as pg_url,
        azurite(root / "azurite") as connection,
        webhook_receiver() as receiver,
    ):
        env = {
            "DAGSTER_PG_URL": pg_url,
            "AZURE_STORAGE_CONNECTION_STRING": connection,
            "RUN_LAUNCHER": "celery",
            "CELERY_BROKER_URL": redis_url(7),
            "CELERY_RESULT_BACKEND": redis_url(8),
            "CELERY_QUEUE": queue,
            "CELERY_WORKERS": "2",
            "CELERY_CONCURRENCY": "2",
            "RUN_MONITORING_POLL_SECONDS": str(MONITOR_SECONDS),
            "LOCAL_BACKENDS": "instant",
            "REDIS_URL": redis_url(9),  # the replicas' shared rate-limit counters
            "RATE_LIMIT_PER_MINUTE": "100000",
            "REGENERATION_SENSOR_ENABLED": "false",
            "WEBHOOK_SECRET": "scaleout-test-secret",
            "WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver listens on loopback
            "WEBHOOK_POLL_SECONDS": WEBHOOK_POLL_SECONDS,
        }
        with temporary_stack(root / "stack", env) as stack:
            second = stack.start_gateway(name="gateway2", port=free_port())
            store = AzureBlobStore(container="jewelry-uploads", connection_string=connection)
            yield ScaleOut(stack, [stack.gateway_url, second], receiver, store)


def _start(gateway: str, body: dict[str, Any], key: str) -> str:
    response = httpx.post(f"{gateway}/workflow/preprocess", json=body, headers={"Idempotency-Key": key}, timeout=60)
    assert response.status_code == 200, response.text
    return str(response.json()["workflowId"])


def _state(gateway: str, workflow_id: str) -> dict[str, Any]:
    response = httpx.get(f"{gateway}/workflow/{workflow_id}", timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _all_ended(gateways: list[str], workflow_ids: list[str]) -> dict[str, str]:
    """Every workflow's status, asked of both gateways in turn; {} until all ended."""
    states = {w: _state(gateways[i % 2], w)["status"] for i, w in enumerate(workflow_ids)}
    return states if all(s in ENDED for s in states.values()) else {}


def test_sixty_requests_across_two_gateways_and_two_workers(scaleout: ScaleOut) -> None:
    gateways, receiver = scaleout.gateways, scaleout.receiver
    body = {"originalImageBase64": PHOTO, "maskPoints": [CUP], "webhookUrl": receiver.url}
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        firsts = [pool.submit(_start, gateways[i % 2], body, f"key-{i}") for i in range(REQUESTS)]
        # A third sent again at once to the other gateway: both race for the key.
        agains = {i: pool.submit(_start, gateways[(i + 1) % 2], body, f"key-{i}") for i in range(0, REQUESTS, 3)}
        workflows = [f.result() for f in firsts]
        assert {i: a.result() for i, a in agains.items()} == {i: workflows[i] for i in agains}
    assert len(set(workflows)) == REQUESTS

    # Each request's webhook says it ended: waiting on the receiver costs the stack nothing, where
    # polling 60 workflows a second through the gateways took a core of the two (GraphQL reads).
    # Generous for 2 shared cores: a preprocess run took 12-19 s here with 4 at once and a load of 12.
    deadline = 120 + 10 * REQUESTS

    def one_post_each() -> bool:
        return len(receiver.posts()) >= REQUESTS

    wait_until(one_post_each, "a webhook for every request", timeout=deadline, every=0.5)
    elapsed = time.monotonic() - started
    states = _all_ended(gateways, workflows)
    assert Counter(states.values()) == {"COMPLETED": REQUESTS}

    runs = {w: runs_of(scaleout.stack.dagster_url, w) for w in workflows}
    extra = {w: [(x["status"], x["stepStats"][-1:]) for x in r] for w, r in runs.items() if len(r) != 1}
    assert extra == {}, "exactly one run per key"
    workers = Counter(next(t["value"] for t in r[0]["tags"] if t["key"] == WORKER_TAG) for r in runs.values())
    assert len(workers) == 2, workers  # both workers executed runs

    # Each replica counts a delivery once its record is written, after the POST; a delivery only
    # starts while the run's record is missing. Once every record exists and the two counters add
    # up to the POSTs received, no delivery is in flight and none can start: a second delivery of
    # any webhook would be in both the counters and the receiver's POSTs.
    def deliveries_settled() -> bool:
        records = [record_path(w, r[0]["runId"]) for w, r in runs.items()]
        counted = sum(_deliveries(gateway) for gateway in gateways)
        return all(scaleout.store.exists_path(path) for path in records) and counted == len(receiver.posts())

    wait_until(deliveries_settled, "every webhook delivered, recorded and counted", timeout=60, every=0.5)
    ids = Counter(p.headers["webhook-id"] for p in receiver.posts())
    assert ids == Counter({r[0]["runId"]: 1 for r in runs.values()}), "each webhook delivered exactly once"
    print(f"\n{REQUESTS} requests on 2 workers: {elapsed:.1f} s; runs per worker {dict(workers)}")


def _deliveries(gateway: str) -> float:
    """The webhooks this gateway replica delivered (jewel_webhook_deliveries_total)."""
    scrape = samples(httpx.get(f"{gateway}/metrics", timeout=30).text)
    return value(scrape, "jewel_webhook_deliveries_total", outcome="delivered")


def _status(dagster_url: str, workflow_id: str) -> list[dict[str, Any]]:
    return runs_of(dagster_url, workflow_id)


def test_a_worker_killed_mid_run_fails_the_run_and_the_retry_completes_elsewhere(scaleout: ScaleOut) -> None:
    stack = scaleout.stack
    response = httpx.post(
        f"{scaleout.gateways[0]}/workflow/start", json={"originalImageBase64": PHOTO, "maskPoints": [CUP]}, timeout=60
    )
    assert response.status_code == 200, response.text
    workflow = response.json()["workflowId"]

    def started_on() -> str | None:
        runs = _status(stack.dagster_url, workflow)
        tags = {t["key"]: t["value"] for t in runs[0]["tags"]} if runs else {}
        return tags.get(WORKER_TAG) if runs and runs[0]["status"] == "STARTED" else None

    victim = wait_until(started_on, "the run started on a worker", timeout=60, every=0.05)
    name = next(n for n in stack.processes if n.startswith("worker") and f"w{n[len('worker') :]}@" in victim)
    os.killpg(stack.processes[name].pid, signal.SIGKILL)  # the machine is gone: main process and pool
    killed_at = time.monotonic()
    stack.processes.pop(name).wait()

    def first_run_failed() -> bool:
        runs = _status(stack.dagster_url, workflow)
        return any(r["status"] == "FAILURE" for r in runs)

    wait_until(first_run_failed, "the killed run failed", timeout=60, every=0.2)
    detected = time.monotonic() - killed_at
    # Pings unanswered for DEAD_AFTER_SECONDS, then monitoring's next poll (2 s here) and a 2 s ping.
    assert detected < DEAD_AFTER_SECONDS + 3 * MONITOR_SECONDS + 5, detected

    def ended() -> list[dict[str, Any]]:
        runs = _status(stack.dagster_url, workflow)
        return runs if runs and runs[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED") and len(runs) == 2 else []

    runs = wait_until(ended, "the retry ended", timeout=90, every=0.5)
    assert [r["status"] for r in runs] == ["SUCCESS", "FAILURE"], runs
    retry_worker = next(t["value"] for t in runs[0]["tags"] if t["key"] == WORKER_TAG)
    assert retry_worker != victim
    assert _state(scaleout.gateways[1], workflow)["status"] == "COMPLETED"
    print(f"\nkilled worker detected after {detected:.1f} s; retried on {retry_worker}")
    assert _unfinished_runs(stack.dagster_url) == []


_UNFINISHED = """{ runsOrError(filter: {statuses: [QUEUED, NOT_STARTED, STARTING, STARTED, CANCELING]}) {
    ... on Runs { results { runId status } } } }"""


def _unfinished_runs(dagster_url: str) -> list[dict[str, Any]]:
    """Runs of the whole instance not ended: none may stay RUNNING after the tests' requests."""
    response = httpx.post(f"{dagster_url}/graphql", json={"query": _UNFINISHED}, timeout=30)
    return list(response.json()["data"]["runsOrError"]["results"])
