"""Webhooks: the final state of a workflow POSTed to the caller's URL, signed, retried.

The full URL may carry credentials (`user:pass@`) or a token in its query, so it is stored only
where the dispatcher reads it: a blob `webhooks/<key>.json`, written when the run is launched,
whose key rides on the run as a tag beside a redacted URL (scheme, host and port only) for people
reading Dagster's UI. Each delivery leaves a record (with the redacted URL) in the blob store next
to the request's artifacts. So a gateway that restarts finds what it still owes from Dagster and
the store alone, and a receiver gets one POST per workflow run, not one per gateway life.

Signatures follow Standard Webhooks (https://www.standardwebhooks.com): `webhook-id` (the run id,
the same on every retry), `webhook-timestamp` (unix seconds of this attempt) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, made with the
`standardwebhooks` library. Each caller has a secret of its own, derived from WEBHOOK_SECRET and
its caller id (`caller_secret`), which it reads with `GET /webhooks/secret` and its API key; the
dispatcher derives it again from the run's owner tag, so nothing per caller is configured or
stored. Receivers verify the signature, refuse timestamps more than 5 minutes off and remember
the ids they accepted (README, "Security").
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook as StandardWebhook

from gateway.bounded_post import bounded_post
from gateway.claims import Claim, claim, release
from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError
from gateway.dagster_api.models import RunInfo, run_info_from
from gateway.results import ResultReader
from gateway.security import ANONYMOUS
from gateway.settings import GatewaySettings
from gateway.starts import PendingStart, state_of_start
from gateway.workflow_state import state_of
from jewel_dagster.contract import (
    OWNER_TAG,
    PARTITION_TAG,
    WEBHOOK_KEY_TAG,
    WEBHOOK_TAG,
    WEBHOOK_URL_TAG,
    WILL_RETRY_TAG,
)
from jewel_dagster.resources.blob_store import BlobStore, BlobStoreError
from jewel_dagster.storage_layout import webhook_delivery_claim, webhook_record_path, webhook_url_path

log = logging.getLogger(__name__)

_SECRET_PREFIX = "whsec_"  # how Standard Webhooks writes a secret: whsec_<base64 of the key>
_RESOLVE_SECONDS = 5.0
_SETTLE_SECONDS = 3.0  # a failed run gets its will_retry tag a moment after its status


class WebhookRefused(ValueError):
    """The URL may not receive webhooks; the message is meant for the person who sent it."""


class WebhookUnresolved(WebhookRefused):
    """The host did not resolve, or not in time: refused at submission, retried at delivery (a
    name server's bad minute is not the URL's fault)."""


class _Resolver:
    """Host names looked up per caller, each lookup with a deadline.

    `getaddrinfo` cannot be cancelled, so a slow name holds its thread until the system resolver
    gives up. On a shared pool of 4 threads, one caller's slow names made every other caller's
    URLs "cannot be resolved". Here each lookup has a thread of its own, and holds one of its
    caller's `per_caller` places (and one of `total`) until it really ends: a caller's slow names
    delay only that caller's lookups, and the threads they can pin are bounded.
    """

    def __init__(self, per_caller: int = 2, total: int = 64) -> None:
        self._per_caller = per_caller
        self._total = threading.BoundedSemaphore(total)
        self._callers: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def _places(self, caller: str) -> threading.BoundedSemaphore:
        with self._lock:
            return self._callers.setdefault(caller, threading.BoundedSemaphore(self._per_caller))

    def resolve(self, host: str, port: int, caller: str, seconds: float) -> list[tuple[Any, ...]]:
        """getaddrinfo's answer; WebhookUnresolved when the name does not resolve within `seconds`."""
        deadline = time.monotonic() + seconds
        places = self._places(caller)
        if not places.acquire(timeout=seconds):
            raise WebhookUnresolved(f"webhookUrl: the host {host!r} cannot be resolved (lookups of this key are slow)")
        if not self._total.acquire(timeout=max(0.0, deadline - time.monotonic())):
            places.release()
            raise WebhookUnresolved(f"webhookUrl: the host {host!r} cannot be resolved now; retry shortly")
        answer: list[list[tuple[Any, ...]]] = []
        done = threading.Event()

        def look_up() -> None:
            try:
                answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except (OSError, UnicodeError):
                pass
            finally:
                self._total.release()
                places.release()
                done.set()

        threading.Thread(target=look_up, name="webhook-dns", daemon=True).start()
        if not done.wait(max(0.0, deadline - time.monotonic())) or not answer or not answer[0]:
            raise WebhookUnresolved(f"webhookUrl: the host {host!r} cannot be resolved")
        return answer[0]


_resolver = _Resolver()


def master_key(webhook_secret: str) -> bytes:
    """WEBHOOK_SECRET's key: `whsec_<base64>` as Standard Webhooks writes secrets, or any other
    string as its UTF-8 bytes (what older settings hold). ValueError when the base64 is broken."""
    if webhook_secret.startswith(_SECRET_PREFIX):
        try:
            key = base64.b64decode(webhook_secret[len(_SECRET_PREFIX) :], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"WEBHOOK_SECRET: whsec_ must be followed by base64: {exc}") from None
    else:
        key = webhook_secret.encode()
    if not key:
        raise ValueError("WEBHOOK_SECRET is empty")
    return key


def caller_secret(webhook_secret: str, caller: str) -> str:
    """The secret that signs `caller`'s webhooks, as `whsec_<base64>`: HMAC-SHA256 of the caller
    id under WEBHOOK_SECRET. One caller's secret tells nothing of another's or of the master."""
    key = hmac.new(master_key(webhook_secret), f"jewel-webhooks/v1:{caller}".encode(), hashlib.sha256).digest()
    return _SECRET_PREFIX + base64.b64encode(key).decode()


def signed_headers(secret: str, message_id: str, body: bytes, now: float) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: signed again with each attempt's time, so a
    late retry still passes a receiver's 5-minute window."""
    when = datetime.fromtimestamp(int(now), tz=UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": StandardWebhook(secret).sign(message_id, when, body.decode()),
    }


# IPv6 forms that carry an IPv4 address, which a translator or tunnel on the way may turn into
# 127.0.0.1 or 10.x: refused whole (the standard library calls some of them global).
_EMBEDDING_IPV4 = tuple(
    ipaddress.ip_network(n)
    for n in (
        "64:ff9b::/96",  # NAT64, well-known prefix (RFC 6052)
        "64:ff9b:1::/48",  # NAT64, local use (RFC 8215)
        "2002::/16",  # 6to4 (RFC 3056)
        "::/96",  # IPv4-compatible (deprecated, RFC 4291), with :: and ::1
        "::ffff:0:0/96",  # IPv4-mapped
    )
)
_MAX_ADDRESSES = 3  # tried in the resolver's order when a connection fails


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if any(ip in network for network in _EMBEDDING_IPV4):
        return False
    return ip.is_global and not ip.is_multicast


def check_webhook_url(url: str, allow_private: bool, caller: str = ANONYMOUS) -> list[str]:
    """Refuse what a webhook must not reach: other schemes, and (unless allowed) any host that
    resolves to a loopback, private, link-local or otherwise non-public address, so a caller
    cannot make the gateway probe the network it sits in.

    Returns the addresses the host resolved to, in the resolver's order: the POST connects to
    these (`PinnedTransport`), never to what a second lookup might answer."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"webhookUrl is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("webhookUrl must be an http:// or https:// URL with a host")
    host = parts.hostname
    infos = _resolver.resolve(host, port or (443 if parts.scheme == "https" else 80), caller, _RESOLVE_SECONDS)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        if not allow_private and not _public(address):
            raise WebhookRefused(
                f"webhookUrl: {host} is {address}, a loopback or private address; webhooks go to public hosts only"
            )
    return addresses


class PinnedTransport(httpx.BaseTransport):
    """Connects to the addresses that were checked, whatever the URL's name resolves to now.

    Looking the name up again to connect would let a name server answer a public address for
    the check and 127.0.0.1 for the connection (DNS rebinding). Only the connection's address
    changes: the request keeps the name in its Host header and, for https, as the TLS server
    name (SNI), which is also what the certificate is checked against. One transport serves one
    URL (a client per attempt), so no pooled connection is shared between names.
    """

    def __init__(self, addresses: list[str], verify: ssl.SSLContext | bool = True) -> None:
        if not addresses:
            raise ValueError("no address to connect to")
        self._addresses = addresses[:_MAX_ADDRESSES]
        self._inner = httpx.HTTPTransport(verify=verify, trust_env=False)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        request.extensions = {**request.extensions, "sni_hostname": url.host}
        failure: httpx.TransportError | None = None
        for address in self._addresses:
            request.url = url.copy_with(host=address.split("%", 1)[0])
            try:
                return self._inner.handle_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = exc
            finally:
                request.url = url
        assert failure is not None
        raise failure

    def close(self) -> None:
        self._inner.close()


def redact(url: str) -> str:
    """What logs, run tags and delivery records show of a webhook URL: scheme://host[:port] only.

    Credentials, query and fragment carry tokens, and so does the path of Slack- and Discord-style
    URLs (`/services/T000/B000/<secret>`): all of them stay in the store (storage_layout.webhook_url_path)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # host[:port], a bracketed IPv6 address included
    return f"{parts.scheme}://{host}"


def store_webhook_url(store: BlobStore, url: str) -> dict[str, str]:
    """Keep the full URL in the blob store and return the run tags that lead the dispatcher to it.

    Called when the run is launched (after the URL was checked); the key is random, so the blob
    is named by nothing a caller sees."""
    key = uuid.uuid4().hex
    store.put(webhook_url_path(key), json.dumps({"url": url}).encode(), "application/json")
    return {WEBHOOK_TAG: "1", WEBHOOK_URL_TAG: redact(url), WEBHOOK_KEY_TAG: key}


@dataclass(frozen=True)
class Delivery:
    """What became of one webhook, stored at storage_layout.webhook_record_path (redacted URL)."""

    url: str
    delivered: bool
    attempts: int
    status_code: int | None
    error: str | None


_FINISHED_RUNS = """
query WebhookRuns($tags: [ExecutionTag!]!, $after: Float!, $before: Float) {
  runsOrError(
    filter: {tags: $tags, statuses: [SUCCESS, FAILURE, CANCELED], updatedAfter: $after, updatedBefore: $before}
    limit: 100
  ) {
    __typename
    ... on Runs {
      results { runId jobName status updateTime tags { key value } stepStats { stepKey status startTime } }
    }
    ... on PythonError { message }
  }
}"""
_PAGE = 100
_MAX_PAGES = 50


class WebhookDispatcher:
    """Watches Dagster for finished runs that owe a webhook and delivers each once.

    One thread asks Dagster (one query a tick while few runs finish); a small pool POSTs, so a
    slow receiver delays only its own webhook. Every gateway replica may run it: a run's webhook
    is claimed in the shared blob store first, so one replica delivers it.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        runs: DagsterRuns,
        results: ResultReader,
        store: BlobStore,
        verify: ssl.SSLContext | bool = True,  # the certificates https receivers are checked against
        on_delivery: Callable[[bool], None] | None = None,  # told each outcome (delivered or not): metrics
    ) -> None:
        master_key(settings.webhook_secret)  # a broken WEBHOOK_SECRET stops the start, not each POST
        self._settings = settings
        self._verify = verify
        self._on_delivery = on_delivery
        self._runs = runs
        self._results = results
        self._store = store
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook")
        self._handled: dict[str, float] = {}  # run id -> when it was handled
        self._settling: dict[str, float] = {}  # failed run id -> when first seen without will_retry
        # After a restart, look back this far for runs that finished while no gateway watched.
        self._watermark = time.time() - settings.webhook_recovery_hours * 3600
        self._thread = threading.Thread(target=self._watch, name="webhook-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ watching

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except DagsterError as exc:
                log.warning("webhooks: Dagster did not answer: %s", exc)
            except Exception:  # the watcher must outlive any one bad run
                log.exception("webhooks: unexpected error")
            self._stop.wait(self._settings.webhook_poll_seconds)

    def _tick(self) -> None:
        tick_started = time.time()
        before: float | None = None
        for _ in range(_MAX_PAGES):  # newest first; page back while pages come full
            batch = self._finished_runs(self._watermark, before)
            for raw in batch:
                self._consider(raw, tick_started)
            if len(batch) < _PAGE:
                break
            before = min(r["updateTime"] for r in batch) + 1e-3
        if not self._settling:
            # Runs that finished before this tick were all seen; the margin covers slow commits.
            self._watermark = max(self._watermark, tick_started - 60.0)
        for run_id in [r for r, t in self._handled.items() if t < self._watermark - 300.0]:
            del self._handled[run_id]

    def _finished_runs(self, after: float, before: float | None) -> list[dict[str, Any]]:
        tags = [{"key": WEBHOOK_TAG, "value": "1"}]
        answer = self._runs.query(_FINISHED_RUNS, {"tags": tags, "after": after, "before": before})["runsOrError"]
        if answer["__typename"] != "Runs":
            raise DagsterError(answer.get("message", answer["__typename"]))
        return answer["results"]

    def _consider(self, raw: dict[str, Any], now: float) -> None:
        run = run_info_from(raw)
        if run.run_id in self._handled or not self._owes_webhook(run, now):
            return
        self._handled[run.run_id] = now
        workflow_id = run.tags.get(PARTITION_TAG, "")
        record = webhook_record_path(workflow_id, run.run_id)
        if self._store.exists_path(record):
            return  # delivered (or given up) before a restart
        # Every replica watches; the one that claims the run delivers (gateway/claims.py). A claim
        # whose replica died before writing the record is taken over once stale, by whichever
        # replica looks again (each one looks back WEBHOOK_RECOVERY_HOURS when it starts).
        held = claim(
            self._store,
            webhook_delivery_claim(run.run_id),
            {},
            self._claim_stale_seconds(),
            settled=lambda held: self._store.exists_path(record),
        )
        if held.won:
            self._pool.submit(self._deliver, workflow_id, run, held)

    def _claim_stale_seconds(self) -> float:
        """Longer than one delivery can take: every attempt's timeout and backoff, plus a minute."""
        attempts = self._settings.webhook_attempts
        backoff = self._settings.webhook_backoff_seconds * (2 ** (attempts - 1) - 1)
        return attempts * (self._settings.webhook_timeout_seconds + _RESOLVE_SECONDS) + backoff + 60.0

    def _owes_webhook(self, run: RunInfo, now: float) -> bool:
        """A failed run that Dagster will retry owes nothing: its retry run carries the webhook."""
        if run.status != "FAILURE":
            return True
        will_retry = run.tags.get(WILL_RETRY_TAG)
        if will_retry is None and now - self._settling.setdefault(run.run_id, now) < _SETTLE_SECONDS:
            return False
        self._settling.pop(run.run_id, None)
        if will_retry == "true":
            self._handled[run.run_id] = now
            return False
        return True

    # ------------------------------------------------------------------ delivering

    def deliver_failed_start(self, start: PendingStart) -> None:
        """A start recorded FAILED before its run existed (gateway/starts.py) sends its `failed`
        final state too, if it asked for a webhook: no run carries it, so the watcher would never
        see it. Called before the start's blobs are deleted (the URL is read here, the POST made on
        the pool). Its `webhook-id` is the start's launch tag; only the gateway that gave the start
        up sends it."""
        key = start.tags.get(WEBHOOK_KEY_TAG)
        if key is None:
            return
        url = str(json.loads(self._store.get_path(webhook_url_path(key)))["url"])
        body = json.dumps(state_of_start(start).model_dump(exclude_none=True), separators=(",", ":")).encode()
        caller = start.tags.get(OWNER_TAG, ANONYMOUS)
        self._pool.submit(self._deliver_body, start.workflowId, start.launch_tag, url, body, caller)

    def _deliver_body(self, workflow_id: str, delivery_id: str, url: str, body: bytes, caller: str) -> None:
        outcome = self._post_with_retries(url, body, delivery_id, caller)
        if outcome is None:  # shutting down
            return
        record = json.dumps(outcome.__dict__).encode()
        self._store.put(webhook_record_path(workflow_id, delivery_id), record, "application/json")
        if self._on_delivery is not None:
            self._on_delivery(outcome.delivered)

    def _full_url(self, run: RunInfo) -> str:
        """The URL as the caller gave it; runs launched before URLs were kept in the store carry
        it in their tag."""
        key = run.tags.get(WEBHOOK_KEY_TAG)
        if key is None:
            return run.tags.get(WEBHOOK_URL_TAG, "")
        return str(json.loads(self._store.get_path(webhook_url_path(key)))["url"])

    def _deliver(self, workflow_id: str, run: RunInfo, held: Claim | None = None) -> None:
        shown = redact(run.tags.get(WEBHOOK_URL_TAG, ""))
        outcome: Delivery | None
        try:
            url = self._full_url(run)
            body = self._final_state(workflow_id, run)
        except (BlobStoreError, OSError, ValueError, KeyError) as exc:  # the URL's blob is gone or broken
            outcome = Delivery(shown, False, 0, None, f"the webhook URL cannot be read: {type(exc).__name__}")
        except DagsterError as exc:  # Dagster kept failing: say so in the record, send nothing made up
            outcome = Delivery(shown, False, 0, None, f"the final state could not be read: {exc}")
        else:
            caller = run.tags.get(OWNER_TAG, ANONYMOUS)  # runs without one (from the UI) were nobody's
            outcome = self._post_with_retries(url, body, run.run_id, caller) if body is not None else None
        if outcome is None:  # shutting down: no record, so another replica or the next gateway delivers it
            if held is not None:
                release(self._store, held)
            return
        record = json.dumps(outcome.__dict__).encode()
        self._store.put(webhook_record_path(workflow_id, run.run_id), record, "application/json")
        if self._on_delivery is not None:
            self._on_delivery(outcome.delivered)

    def _final_state(self, workflow_id: str, run: RunInfo) -> bytes | None:
        """GET's body for the run, asked again with backoff while Dagster does not answer; None
        when stopped meanwhile; DagsterError after the last attempt."""
        for attempt in range(1, self._settings.webhook_attempts + 1):
            try:
                # Its list of finished runs has no progress: a FAILED or CANCELLED body names the step.
                placed = run if run.status == "SUCCESS" else self._runs.with_progress(run)
                state = state_of(workflow_id, placed, self._runs, self._results)
                return json.dumps(state.model_dump(exclude_none=True), separators=(",", ":")).encode()
            except DagsterError as exc:
                log.warning("webhooks: cannot read the state of %s yet: %s", workflow_id, exc)
                if attempt == self._settings.webhook_attempts:
                    raise
                if self._stop.wait(self._settings.webhook_backoff_seconds * 2 ** (attempt - 1)):
                    return None
        return None

    def _post(self, url: str, addresses: list[str], body: bytes, headers: dict[str, str]) -> int:
        """One POST to one of `addresses`, on the transport itself: httpx's client would log the
        full URL (its credentials and query), follow no proxy we want, and offer nothing else here.
        Credentials in the URL become Basic auth, as a client would send them. The whole POST ends
        within WEBHOOK_TIMEOUT_SECONDS and reads a few KB of the answer at most (bounded_post.py);
        its status code is returned."""
        target = httpx.URL(url)
        headers = dict(headers)
        if target.username or target.password:
            pair = f"{target.username}:{target.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        request = httpx.Request("POST", target.copy_with(username=None, password=None), content=body, headers=headers)
        with PinnedTransport(addresses, self._verify) as transport:
            return bounded_post(transport, request, self._settings.webhook_timeout_seconds)

    def _post_with_retries(self, url: str, body: bytes, delivery_id: str, caller: str = ANONYMOUS) -> Delivery | None:
        """POST until a 2xx, a refusal (4xx) or the last attempt; None when stopped meanwhile.

        The outcome and the log name the URL redacted."""
        shown = redact(url)
        secret = caller_secret(self._settings.webhook_secret, caller)
        headers = {
            "Content-Type": "application/json",
            "X-Jewel-Event": "workflow.finished",
            "User-Agent": "jewel-dagster-webhooks/2",
        }
        status_code: int | None = None
        error = "not attempted"
        attempts = self._settings.webhook_attempts
        for attempt in range(1, attempts + 1):
            try:
                # DNS may have changed since the submission: check again, and connect to what was checked.
                addresses = check_webhook_url(url, self._settings.webhook_allow_private, caller)
                signed = {**headers, **signed_headers(secret, delivery_id, body, time.time())}
                status_code = self._post(url, addresses, body, signed)
                error = f"HTTP {status_code}"
                if 200 <= status_code < 300:
                    return Delivery(shown, True, attempt, status_code, None)
                if 400 <= status_code < 500 and status_code not in (408, 425, 429):
                    return Delivery(shown, False, attempt, status_code, f"the receiver refused it: {error}")
            except WebhookUnresolved as exc:  # the name server, not the URL: try again
                status_code, error = None, str(exc)
            except WebhookRefused as exc:
                return Delivery(shown, False, attempt, None, str(exc))
            except httpx.HTTPError as exc:
                status_code, error = None, f"{type(exc).__name__}: {exc}"[:300]
            if attempt < attempts and self._stop.wait(self._settings.webhook_backoff_seconds * 2 ** (attempt - 1)):
                return None
        log.warning("webhooks: gave up on %s after %d attempts: %s", shown, attempts, error)
        return Delivery(shown, False, attempts, status_code, error)
