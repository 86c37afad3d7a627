"""The soak's traffic: simulated clients that start requests, poll them, listen to their event
streams, cancel some, send some POSTs twice with the same Idempotency-Key, ask for webhooks, and
now and then send a bad body. Everything they see is recorded for invariants.py.

A client behaves as the README asks of one: a 503 or 429 is retried after its Retry-After, a
gateway that does not answer is replaced by the other replica.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.common import BODY
from benchmarks.soak.stack import GATEWAYS, SoakStack

ENDED = ("COMPLETED", "FAILED", "CANCELLED")
POLL_SECONDS = 2.0
POST_DEADLINE = 180.0  # a client gives a POST this long (503s, a gateway down) before giving up
CANCEL_SHARE, RETRY_SHARE, WEBHOOK_SHARE, STREAM_SHARE, BAD_SHARE = 0.10, 0.10, 0.30, 0.10, 0.02
BAD_BODIES: tuple[dict[str, Any], ...] = (
    {"maskPoints": [{"x": 0.5, "y": 0.5, "label": 1}]},  # no photo
    {"originalImageBase64": "!!not base64!!", "maskPoints": [{"x": 0.5, "y": 0.5, "label": 1}]},
    {"originalImageBase64": BODY["originalImageBase64"], "maskPoints": [{"x": 0.5, "y": 0.5, "label": 0}]},
    {"originalImageBase64": BODY["originalImageBase64"], "maskPoints": [{"x": 7, "y": -1, "label": 1}]},
)


@dataclass
class Request:
    """One accepted request, as its client saw it."""

    workflow_id: str
    job: str  # start, preprocess or generate
    key: str
    accepted_at: float
    webhook: bool
    parent: str | None = None  # generate: the preprocess it continues
    seen: list[tuple[float, str]] = field(default_factory=list)  # (time, status) of each GET
    final: dict[str, Any] | None = None
    ended_at: float | None = None
    cancel_answer: str | None = None  # "200 CANCELLED", "409", ...
    cancelled_at: float | None = None  # when the API said CANCELLED

    def as_dict(self) -> dict[str, Any]:
        final = {k: v for k, v in (self.final or {}).items() if k != "result"}
        return {
            "workflowId": self.workflow_id, "job": self.job, "key": self.key, "acceptedAt": self.accepted_at,
            "webhook": self.webhook, "parent": self.parent, "final": final, "endedAt": self.ended_at,
            "cancelAnswer": self.cancel_answer,
        }  # fmt: skip


@dataclass
class Record:
    """What all clients saw: requests, GET latencies, and violations seen on the wire."""

    requests: list[Request] = field(default_factory=list)
    gets: list[tuple[float, float, str, int]] = field(default_factory=list)  # (at, seconds, gateway, status)
    posts: list[tuple[float, str, int]] = field(default_factory=list)  # (at, path, status)
    violations: list[dict[str, Any]] = field(default_factory=list)
    streams: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def violation(self, rule: str, detail: str, ids: list[str] | None = None) -> None:
        with self.lock:
            self.violations.append({"rule": rule, "detail": detail[:500], "ids": ids or [], "at": time.time()})

    def count_stream(self, outcome: str) -> None:
        with self.lock:
            self.streams[outcome] = self.streams.get(outcome, 0) + 1


class Client:
    def __init__(self, index: int, soak: SoakStack, record: Record, stopping: threading.Event, seed: int) -> None:
        self.index, self.soak, self.record, self.stopping = index, soak, record, stopping
        self.rng = random.Random(seed * 1000 + index)
        self.http = httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0))

    def gateway(self, avoid: str | None = None) -> str:
        choices = [g for g in GATEWAYS if g != avoid] or list(GATEWAYS)
        return self.rng.choice(choices)

    # --- the wire -----------------------------------------------------------------------------

    def post(self, path: str, body: dict[str, Any], key: str | None, gateway: str) -> httpx.Response | None:
        """POST until an answer that is not 503/429 (after Retry-After) or the deadline; another
        gateway when one does not answer. None when nothing answered in time."""
        headers = {"Idempotency-Key": key} if key else {}
        deadline = time.monotonic() + POST_DEADLINE
        while time.monotonic() < deadline:
            try:
                response = self.http.post(f"{self.soak.gateway_url(gateway)}{path}", json=body, headers=headers)
            except httpx.TransportError:
                gateway = self.gateway(avoid=gateway)
                time.sleep(1.0)
                continue
            with self.record.lock:
                self.record.posts.append((time.time(), path, response.status_code))
            if response.status_code in (429, 503):
                time.sleep(min(5.0, float(response.headers.get("Retry-After", "1") or 1)))
                continue
            if response.status_code >= 500:
                self.record.violation("no 5xx but 503", f"POST {path}: {response.status_code} {response.text[:200]}")
            return response
        return None

    def get(self, workflow_id: str) -> dict[str, Any] | None:
        gateway = self.gateway()
        for _ in range(2):
            started = time.monotonic()
            try:
                response = self.http.get(f"{self.soak.gateway_url(gateway)}/workflow/{workflow_id}")
            except httpx.TransportError:
                gateway = self.gateway(avoid=gateway)
                continue
            with self.record.lock:
                self.record.gets.append((time.time(), time.monotonic() - started, gateway, response.status_code))
            if response.status_code == 200:
                return dict(response.json())
            if response.status_code == 404:
                self.record.violation("nothing lost", f"GET {workflow_id}: 404", [workflow_id])
            elif response.status_code != 503:
                self.record.violation("no 5xx but 503", f"GET {workflow_id}: {response.status_code}", [workflow_id])
            return None
        return None

    # --- behaviour ----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                roll = self.rng.random()
                if roll < BAD_SHARE:
                    self.bad_body()
                elif roll < 0.5:
                    self.one("/workflow/start", dict(BODY), "start")
                else:
                    first = self.one("/workflow/preprocess", dict(BODY), "preprocess")
                    result = (first.final or {}).get("result") or {} if first else {}
                    if first and result.get("imageUri") and not self.stopping.is_set():
                        body = {"imageUri": result["imageUri"], "maskUri": result["maskUri"], "brushStrokes": []}
                        self.one("/workflow/generate", body, "generate", parent=first.workflow_id)
                self.stopping.wait(self.rng.uniform(0, 2))
        finally:
            self.http.close()

    def bad_body(self) -> None:
        body = self.rng.choice(BAD_BODIES)
        response = self.post("/workflow/start", body, None, self.gateway())
        if response is not None and not 400 <= response.status_code < 500:
            self.record.violation("bad body: 4xx", f"{body!r:.80}: {response.status_code} {response.text[:200]}")

    def one(self, path: str, body: dict[str, Any], job: str, parent: str | None = None) -> Request | None:
        """POST one request (sometimes twice, sometimes with a webhook, sometimes cancelled) and
        poll it every 2 s until it ends or the traffic stops."""
        key = f"soak-{uuid.uuid4().hex}"
        webhook = self.rng.random() < WEBHOOK_SHARE
        if webhook:
            body = {**body, "webhookUrl": self.soak.receiver.url}
        gateway = self.gateway()
        response = self.post(path, body, key, gateway)
        if response is None or response.status_code != 200:
            if response is not None and job == "generate" and response.status_code == 409:
                return None  # the preprocess's lineage is still running (a retry): a 409 is the answer
            detail = "no answer" if response is None else f"{response.status_code} {response.text[:200]}"
            self.record.violation("accepted", f"POST {path}: {detail}")
            return None
        request = Request(response.json()["workflowId"], job, key, time.time(), webhook, parent)
        with self.record.lock:
            self.record.requests.append(request)
        if self.rng.random() < RETRY_SHARE:
            again = self.post(path, body, key, self.gateway(avoid=gateway))
            if again is not None and again.status_code == 200 and again.json()["workflowId"] != request.workflow_id:
                ids = [request.workflow_id, again.json()["workflowId"]]
                self.record.violation("one run per idempotency key", f"key {key}: two workflows", ids)
            elif again is None or again.status_code != 200:
                code = again.status_code if again is not None else "no answer"
                self.record.violation(
                    "one run per idempotency key", f"retry of key {key}: {code}", [request.workflow_id]
                )
        if self.rng.random() < STREAM_SHARE:
            threading.Thread(target=self.stream, args=(request.workflow_id,), daemon=True).start()
        cancel_at = time.monotonic() + self.rng.uniform(0, 8) if self.rng.random() < CANCEL_SHARE else None
        self.follow(request, cancel_at)
        return request

    def follow(self, request: Request, cancel_at: float | None) -> None:
        while not self.stopping.is_set():
            if cancel_at is not None and time.monotonic() >= cancel_at:
                self.cancel(request)
                cancel_at = None
            state = self.get(request.workflow_id)
            if state is not None:
                observe(self.record, request, state)
                if request.final is not None:
                    return
            self.stopping.wait(POLL_SECONDS)

    def cancel(self, request: Request) -> None:
        response = self.post(f"/workflow/{request.workflow_id}/cancel", {}, None, self.gateway())
        if response is None:
            request.cancel_answer = "no answer"
            return
        status = response.json().get("status", "") if response.status_code in (200, 202) else ""
        request.cancel_answer = f"{response.status_code} {status}".strip()
        if response.status_code == 200 and status == "CANCELLED":
            request.cancelled_at = time.time()

    def stream(self, workflow_id: str) -> None:
        """Listen to the request's event stream until its final event, the stream's end, or 120 s."""
        url = f"{self.soak.gateway_url(self.gateway())}/workflow/{workflow_id}/events"
        outcome = "closed without a final event"
        try:
            with httpx.stream("GET", url, timeout=httpx.Timeout(30.0, connect=5.0)) as events:
                ends = time.monotonic() + 120
                for line in events.iter_lines():
                    if line.startswith("event: ") and line[7:] in ("final", "shutdown", "error", "timeout"):
                        outcome = line[7:]
                        break
                    if time.monotonic() > ends or self.stopping.is_set():
                        outcome = "left open at the end"
                        break
        except httpx.HTTPError as exc:
            outcome = f"transport: {type(exc).__name__}"
        self.record.count_stream(outcome)


def observe(record: Record, request: Request, state: dict[str, Any]) -> None:
    """One GET of a request: its status noted; the first final state kept; a cancelled request
    that later reports COMPLETED, or a final state that changes, is a violation."""
    status = state.get("status", "?")
    request.seen.append((time.time(), status))
    if request.cancelled_at is not None and status == "COMPLETED":
        record.violation("cancelled never COMPLETED", "CANCELLED, then COMPLETED", [request.workflow_id])
    if request.final is not None and status != request.final["status"]:
        record.violation("final is final", f"{request.final['status']}, then {status}", [request.workflow_id])
    if status in ENDED and request.final is None:
        request.final, request.ended_at = state, time.time()


class Traffic:
    def __init__(self, soak: SoakStack, clients: int, seed: int) -> None:
        self.record = Record()
        self.stopping = threading.Event()
        self.clients = [Client(i, soak, self.record, self.stopping, seed) for i in range(clients)]
        self.threads = [threading.Thread(target=c.run, name=f"client{c.index}", daemon=True) for c in self.clients]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()
            time.sleep(0.2)  # not all 20 in the same instant

    def stop(self) -> None:
        """No new request; every client returns once its POST under way is answered."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=POST_DEADLINE + 30)
