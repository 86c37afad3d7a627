"""The promises the soak checks once the traffic stopped and the system settled (README, issue 32):
every request ended (FAILED ones say where and why), none lost, one run per idempotency key, one
signed webhook per run that owes one, the `gpu` pool never over its limit (sampled every 0.5 s
during the soak) and free at the end, nothing left behind (runs, pool claims, pending starts),
a cancelled request never COMPLETED, and GETs fast outside the seconds a gateway was down.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import httpx
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from pydantic import SecretStr
from standardwebhooks import Webhook

from benchmarks.common import percentile
from benchmarks.soak.chaos import Chaos
from benchmarks.soak.stack import GATEWAYS, WEBHOOK_SECRET, SoakStack
from benchmarks.soak.traffic import ENDED, Record, Request, observe
from gateway.security import ANONYMOUS
from gateway.starts import read_start
from gateway.webhooks import caller_secret
from jewel_dagster.resources.selection import build_blob_store
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import PENDING_START_PREFIX, pending_start_id

GPU_POOL = "gpu"
UNFINISHED = [
    DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING,
]  # fmt: skip
RETRY_TAG = "dagster/retry_number"


class GpuSampler:
    """Reads the `gpu` pool's claimed slots from the instance every 0.5 s on a thread of its own;
    any moment more steps hold it than its limit is kept."""

    def __init__(self, instance: DagsterInstance, every: float = 0.5) -> None:
        self.instance, self.every = instance, every
        self.samples = 0
        self.failed = 0
        self.most = 0
        self.limit = 0
        self.over: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)

    def _run(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                info = self.instance.event_log_storage.get_concurrency_info(GPU_POOL)
            except Exception:  # noqa: BLE001 (PostgreSQL paused or restarting: a gap in the samples)
                self.failed += 1
                continue
            self.samples += 1
            claimed = [(slot.run_id, slot.step_key) for slot in info.claimed_slots]
            self.limit = info.slot_count
            self.most = max(self.most, len(claimed))
            if len(claimed) > info.slot_count:
                self.over.append({"at": time.time(), "limit": info.slot_count, "claimed": claimed})


def settle(soak: SoakStack, record: Record, timeout: float) -> dict[str, dict[str, Any] | None]:
    """GET every workflow until all ended or ``timeout``; the last state of each (None: no answer).
    A request its client stopped following gets its final state and end time here."""
    ids = sorted({r.workflow_id for r in record.requests})
    newest = {r.workflow_id: r for r in sorted(record.requests, key=lambda r: r.accepted_at)}
    last: dict[str, dict[str, Any] | None] = {w: newest[w].final for w in ids}
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30) as http:
        while True:
            for index, workflow_id in enumerate(ids):
                state = last[workflow_id]
                if state is not None and state.get("status") in ENDED:
                    continue
                url = f"{soak.gateway_url(GATEWAYS[index % 2])}/workflow/{workflow_id}"
                try:
                    response = http.get(url)
                except httpx.TransportError:
                    continue
                if response.status_code == 200:
                    last[workflow_id] = state = response.json()
                    observe(record, newest[workflow_id], state)
                elif response.status_code == 404:
                    last[workflow_id] = {"status": "404"}
            pending = [w for w, s in last.items() if s is None or s.get("status") not in ENDED]
            if not pending or time.monotonic() > deadline:
                return last
            time.sleep(2.0)


class Checks:
    """Every invariant, each adding its violations (rule, detail, ids) to the record's."""

    def __init__(self, soak: SoakStack, record: Record, chaos: Chaos, instance: DagsterInstance) -> None:
        self.soak, self.record, self.chaos, self.instance = soak, record, chaos, instance
        env = soak.stack.env
        self.store = build_blob_store(
            PipelineSettings(
                local_blob_root=env["LOCAL_BLOB_ROOT"],
                azure_storage_connection_string=SecretStr(env["AZURE_STORAGE_CONNECTION_STRING"]),
            ),
            inside_dagster=False,
        )

    def fail(self, rule: str, detail: str, ids: list[str] | None = None) -> None:
        self.record.violation(rule, detail, ids)

    def final_states(self, last: dict[str, dict[str, Any] | None]) -> None:
        for workflow_id, state in last.items():
            status = (state or {}).get("status")
            if state is None or status == "404":
                self.fail("nothing lost", f"GET answered {status or 'nothing'}", [workflow_id])
            elif status not in ENDED:
                self.fail("every request ends", f"still {status} after the settle time", [workflow_id])
            elif status == "FAILED" and not (state.get("failedStep") and state.get("error")):
                self.fail("FAILED says where and why", f"failedStep/error missing: {state}", [workflow_id])

    def cancelled_never_completed(self, last: dict[str, dict[str, Any] | None]) -> None:
        by_id: dict[str, list[Request]] = defaultdict(list)
        for request in self.record.requests:
            by_id[request.workflow_id].append(request)
        for workflow_id, requests in by_id.items():
            # A preprocess continued by a generate shares its workflow id: judge the newest.
            newest = max(requests, key=lambda r: r.accepted_at)
            if newest.cancelled_at is not None and (last.get(workflow_id) or {}).get("status") == "COMPLETED":
                self.fail("cancelled never COMPLETED", "CANCELLED, then COMPLETED at the end", [workflow_id])

    def one_run_per_key(self) -> dict[str, list[Any]]:
        """Each request (a POST with its key) made one run and retries of it: first runs per
        (workflow, job) at most one. Returns the runs per workflow for the webhook check."""
        runs_by_id: dict[str, list[Any]] = {}
        for workflow_id in sorted({r.workflow_id for r in self.record.requests}):
            runs = self.instance.get_runs(RunsFilter(tags={"dagster/partition": workflow_id}))
            runs_by_id[workflow_id] = runs
            firsts = Counter(run.job_name for run in runs if RETRY_TAG not in run.tags)
            doubled = {job: n for job, n in firsts.items() if n > 1}
            if doubled:
                self.fail("one run per idempotency key", f"first runs per job: {doubled}", [workflow_id])
        return runs_by_id

    def webhooks(self, runs_by_id: dict[str, list[Any]], timeout: float) -> None:
        """One delivery per ended run chain that asked for one, each correctly signed."""
        owed = Counter(r.workflow_id for r in self.record.requests if r.webhook)

        def delivered() -> Counter[str]:
            got: Counter[str] = Counter()
            for post in self.soak.receiver.posts():
                try:
                    got[json.loads(post.body).get("workflowId", "?")] += 1
                except ValueError:
                    got["?"] += 1
            return got

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(delivered()[w] < n for w, n in owed.items()):
            time.sleep(1.0)
        time.sleep(10.0)  # a second delivery of any of them would come now
        got = delivered()
        for workflow_id, count in owed.items():
            if got[workflow_id] < count:
                self.fail(
                    "one webhook per run that owes one", f"{got[workflow_id]} of {count} delivered", [workflow_id]
                )
        signer = Webhook(caller_secret(WEBHOOK_SECRET, ANONYMOUS))
        ids = Counter(post.headers.get("webhook-id", "") for post in self.soak.receiver.posts())
        for message_id, count in ids.items():
            if count > 1:
                self.fail("one webhook per run that owes one", f"webhook-id {message_id} delivered {count} times")
        for post in self.soak.receiver.posts():
            headers = {k.lower(): v for k, v in post.headers.items()}
            if not _signed(signer, headers, post.body):
                self.fail("webhook signature valid", f"{headers.get('webhook-id')}: signature does not match")
        unasked = set(got) - set(owed)
        if unasked:
            self.fail("webhooks only when asked", f"{len(unasked)} workflows got one unasked", sorted(unasked)[:10])

    def nothing_left(self, sampler: GpuSampler, timeout: float) -> dict[str, Any]:
        """No unfinished run, no `gpu` slot claimed or step pending, no pending start; waits up to
        ``timeout`` for slots freed after a run's end (free_slots_after_run_end_seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            runs = self.instance.get_runs(RunsFilter(statuses=UNFINISHED))
            info = self.instance.event_log_storage.get_concurrency_info(GPU_POOL)
            # Cancelled and failed starts keep their record (GET's answer until it expires).
            starts = [
                blob.path
                for blob in self.store.list_prefix(PENDING_START_PREFIX)
                if (start := read_start(self.store, pending_start_id(blob.path)))
                and start.state == "pending"
            ]
            left = {
                "unfinished runs": [f"{r.run_id} {r.status.value}" for r in runs],
                "gpu slots claimed": [f"{s.run_id} {s.step_key}" for s in info.claimed_slots],
                "gpu steps pending": [f"{s.run_id} {s.step_key}" for s in info.pending_steps],
                "pending starts": starts,
            }
            if not any(left.values()) or time.monotonic() > deadline:
                break
            time.sleep(2.0)
        for what, items in left.items():
            if items:
                self.fail("nothing left behind", f"{len(items)} {what}", items[:20])
        for over in sampler.over:
            self.fail("gpu pool never over its limit", json.dumps(over)[:400], sorted({r for r, _ in over["claimed"]}))
        return left

    def get_latency(self, bound: float) -> dict[str, float]:
        """GET p99 outside the windows in which the gateway asked was down (and 2 s after)."""
        kept = []
        for at, seconds, gateway, _ in self.record.gets:
            windows = self.chaos.down_windows(gateway)
            if not any(start - 1.0 <= at <= end + 2.0 for start, end in windows):
                kept.append(seconds)
        pauses = [(f.at, f.back or f.at) for f in self.chaos.faults if f.kind == "postgres_pause"]
        unpaused = [
            seconds
            for at, seconds, gateway, _ in self.record.gets
            if not any(start - 1.0 <= at <= end + 2.0 for start, end in self.chaos.down_windows(gateway) + pauses)
        ]
        figures = {
            "p99 outside PostgreSQL pauses too": percentile(unpaused, 99),
            "n": float(len(kept)),
            "median": percentile(kept, 50),
            "p95": percentile(kept, 95),
            "p99": percentile(kept, 99),
            "bound": bound,
        }
        if kept and figures["p99"] > bound:
            self.fail("GET p99 within its bound", f"p99 {figures['p99']:.2f} s > {bound:.2f} s over {len(kept)} GETs")
        return figures


def _signed(signer: Webhook, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks signature checked as a receiver does at receipt, the 5-minute window
    aside (the soak checks minutes later): HMAC of "{id}.{timestamp}.{body}" under the secret."""
    try:
        when = datetime.fromtimestamp(int(headers["webhook-timestamp"]), tz=UTC)
        expected = signer.sign(headers["webhook-id"], when, body.decode())
    except (KeyError, ValueError):
        return False
    return expected.partition(",")[2] in {s.partition(",")[2] for s in headers.get("webhook-signature", "").split()}
