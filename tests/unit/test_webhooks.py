"""Webhook URL checks, signatures and delivery retries, against a real loopback receiver."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import json
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.models import RunInfo, run_info_from
from gateway.results import ResultReader
from gateway.settings import GatewaySettings
from gateway.webhook_outbox import outbox
from gateway.webhook_outbox.sender import Attempt, send_once
from gateway.webhook_outbox.watcher import WebhookDispatcher
from gateway.webhooks import WebhookRefused, caller_secret, check_webhook_url, signed_headers
from jewel_dagster.resources.blob_store import LocalBlobStore
from tests.support.answers import NEEDS_KEY, PIPELINE_DOWN, assert_refused
from tests.support.gateway_client import gateway_client, start_body
from tests.support.outbox import Clock, drain, inline_dispatcher, queue
from tests.support.receivers import hostile_receiver, webhook_receiver


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.7/hook",
        "http://172.16.5.5/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://100.64.0.1/hook",
    ],
)
def test_private_and_loopback_addresses_are_refused(url: str) -> None:
    with pytest.raises(WebhookRefused, match="loopback or private"):
        check_webhook_url(url, allow_private=False)


@pytest.mark.parametrize("url", ["ftp://8.8.8.8/hook", "file:///etc/passwd", "http:///nohost", "http://[::1/x"])
def test_other_schemes_and_broken_urls_are_refused(url: str) -> None:
    with pytest.raises(WebhookRefused):
        check_webhook_url(url, allow_private=True)


def test_public_addresses_and_allowed_private_ones_pass() -> None:
    check_webhook_url("https://8.8.8.8/hook", allow_private=False)
    check_webhook_url("http://[2001:4860:4860::8888]:8443/x", allow_private=False)
    check_webhook_url("http://127.0.0.1:9000/hook", allow_private=True)


def test_signature_follows_standard_webhooks() -> None:
    """v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"> under the key a whsec_ secret holds."""
    body = b'{"workflowId":"x","status":"COMPLETED"}'
    key = b"0123456789abcdef0123456789abcdef"
    secret = "whsec_" + base64.b64encode(key).decode()
    headers = signed_headers(secret, "run-1", body, now=1_700_000_000.7)
    expected = hmac.new(key, b"run-1.1700000000." + body, hashlib.sha256).digest()
    assert headers == {
        "webhook-id": "run-1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1," + base64.b64encode(expected).decode(),
    }


def test_each_caller_has_a_secret_of_its_own() -> None:
    alice, bob = caller_secret("master", "alice-id"), caller_secret("master", "bob-id")
    assert alice.startswith("whsec_") and len(base64.b64decode(alice[6:])) == 32
    assert alice != bob and alice == caller_secret("master", "alice-id")
    assert caller_secret("another master", "alice-id") != alice
    # A whsec_ master is used by its decoded key, as the spec writes secrets.
    raw = b"k" * 32
    assert caller_secret("whsec_" + base64.b64encode(raw).decode(), "a") == caller_secret(raw.decode(), "a")
    with pytest.raises(ValueError, match="base64"):
        caller_secret("whsec_not*base64", "a")


def _dispatcher(tmp_path: Path, clock: Callable[[], float] = time.time, **overrides: object) -> WebhookDispatcher:
    options: dict[str, object] = {"webhook_allow_private": True, "webhook_backoff_seconds": 0.05, **overrides}
    settings = GatewaySettings(local_blob_root=str(tmp_path), webhook_secret="s3cret", **options)  # type: ignore[arg-type]
    store = LocalBlobStore(root=str(tmp_path))
    return WebhookDispatcher(settings, DagsterRuns(settings), ResultReader(store), store, clock=clock)


def _send(dispatcher: WebhookDispatcher, url: str, body: bytes, delivery_id: str, caller: str = "anonymous") -> Attempt:
    """One attempt, as the outbox makes it."""
    return send_once(dispatcher._settings, url, body, delivery_id, caller, "completed", time.time(), dispatcher._verify)


def _drained(dispatcher: WebhookDispatcher) -> None:
    """Make every attempt the dispatcher's outbox owes, with time made fast."""
    clock = Clock()
    drain(inline_dispatcher(dispatcher._settings, clock), clock)


def test_a_failing_receiver_is_retried_until_it_accepts(tmp_path: Path) -> None:
    dispatcher = _dispatcher(tmp_path)
    body = json.dumps({"workflowId": "w", "status": "COMPLETED"}).encode()
    clock = Clock()
    with webhook_receiver(answers=[500, 503]) as receiver:
        queue(dispatcher._settings, receiver.url, "run-1", clock, body=body.decode())
        drain(inline_dispatcher(dispatcher._settings, clock), clock)
    posts = receiver.posts()
    record = outbox.read(dispatcher._store, "jewelry-gen-w", "run-1")
    assert record is not None and record.status == "delivered" and record.attempts == 3, record
    assert [p.body for p in posts] == [body] * 3
    assert {p.headers["webhook-id"] for p in posts} == {"run-1"}  # stable across retries
    verifier = Webhook(caller_secret("s3cret", "anonymous"))
    for post in posts:
        assert verifier.verify(post.body, post.headers) == {"workflowId": "w", "status": "COMPLETED"}
        assert abs(int(post.headers["webhook-timestamp"]) - time.time()) < 60
        assert "X-Jewel-Signature" not in post.headers


def test_a_callers_webhook_verifies_with_its_secret_only(tmp_path: Path) -> None:
    dispatcher = _dispatcher(tmp_path)
    with webhook_receiver() as receiver:
        _send(dispatcher, receiver.url, b'{"a":1}', delivery_id="run-2", caller="alice-id")
        (post,) = receiver.posts()
    assert Webhook(caller_secret("s3cret", "alice-id")).verify(post.body, post.headers) == {"a": 1}
    for other in (caller_secret("s3cret", "bob-id"), caller_secret("s3cret", "anonymous")):
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(post.body, post.headers)
    stale = {**post.headers, "webhook-timestamp": str(int(time.time()) - 600)}
    with pytest.raises(WebhookVerificationError, match="too old"):  # what receivers refuse: replays
        Webhook(caller_secret("s3cret", "alice-id")).verify(post.body, stale)


def test_a_caller_reads_its_webhook_secret_with_its_key(tmp_path: Path) -> None:
    with gateway_client(tmp_path, gateway_api_keys="key-a,key-b", webhook_secret="s3cret") as client:
        a = client.get("/webhooks/secret", headers={"X-API-Key": "key-a"})
        b = client.get("/webhooks/secret", headers={"Authorization": "Bearer key-b"})
        assert_refused(client.get("/webhooks/secret"), 401, NEEDS_KEY)
        assert a.status_code == 200 and a.headers["Cache-Control"] == "no-store"
    assert a.json()["secret"].startswith("whsec_") and a.json()["secret"] != b.json()["secret"]
    from gateway.security import caller_id

    assert a.json()["secret"] == caller_secret("s3cret", caller_id("key-a", "test-secret-of-the-gateway"))
    with gateway_client(tmp_path) as client:  # webhooks off
        assert_refused(client.get("/webhooks/secret"), 404, "webhooks are off on this gateway (no WEBHOOK_SECRET set)")


def test_a_refusal_is_final(tmp_path: Path) -> None:
    dispatcher = _dispatcher(tmp_path)
    clock = Clock()
    with webhook_receiver(answers=[410]) as receiver:
        queue(dispatcher._settings, receiver.url, "run-r", clock)
        drain(inline_dispatcher(dispatcher._settings, clock), clock)
    record = outbox.read(dispatcher._store, "jewelry-gen-w", "run-r")
    assert record is not None and record.status == "refused" and record.attempts == 1, record
    assert record.lastStatusCode == 410 and len(receiver.posts()) == 1


def test_a_receiver_asking_to_wait_is_retried_and_each_post_names_its_event(tmp_path: Path) -> None:
    """README, Webhooks: "a 4xx other than 408/425/429 is final"; these three are retried, and every
    POST carries `X-Jewel-Event: workflow.finished`."""
    dispatcher = _dispatcher(tmp_path)
    clock = Clock()
    with webhook_receiver(answers=[408, 425, 429]) as receiver:
        queue(dispatcher._settings, receiver.url, "run-w", clock, body='{"status":"COMPLETED"}')
        drain(inline_dispatcher(dispatcher._settings, clock), clock)
    posts = receiver.posts()
    record = outbox.read(dispatcher._store, "jewelry-gen-w", "run-w")
    assert record is not None and record.status == "delivered" and record.attempts == 4, record
    assert len(posts) == 4
    for post in posts:
        event = {name.lower(): value for name, value in post.headers.items()}.get("x-jewel-event")
        assert event == "workflow.finished", post.headers


def test_the_gateway_refuses_a_webhook_it_cannot_send(tmp_path: Path) -> None:
    with gateway_client(tmp_path) as client:  # no WEBHOOK_SECRET
        response = client.post("/workflow/start", json=start_body(webhookUrl="https://8.8.8.8/hook"))
        assert response.status_code == 400
        assert "WEBHOOK_SECRET" in response.json()["detail"]
    with gateway_client(tmp_path, webhook_secret="s") as client:
        private = client.post("/workflow/start", json=start_body(webhookUrl="http://10.0.0.8/hook"))
        assert private.status_code == 400 and "private" in private.json()["detail"]
        scheme = client.post("/workflow/start", json=start_body(webhookUrl="gopher://8.8.8.8/"))
        assert scheme.status_code == 400 and "http" in scheme.json()["detail"]
        # A public URL passes the check and the request goes on (to a Dagster that is not there).
        public = client.post("/workflow/start", json=start_body(webhookUrl="https://8.8.8.8/hook"))
        assert_refused(public, 503, PIPELINE_DOWN)
    assert not list((tmp_path / "blobs").rglob("upload*"))  # refused requests store nothing


def test_a_state_dagster_cannot_give_is_recorded_not_invented(tmp_path: Path) -> None:
    """Dagster down while a failed run's message is read: nothing is POSTed, the record says why."""
    from jewel_dagster.contract import WEBHOOK_URL_TAG
    from jewel_dagster.storage_layout import webhook_record_path as record_path
    from tests.support.e2e_stack import free_port

    dispatcher = _dispatcher(tmp_path, webhook_attempts=2, dagster_port=free_port())
    with webhook_receiver() as receiver:
        run = RunInfo("run-9", "jewelry_generation", "FAILURE", [], {WEBHOOK_URL_TAG: receiver.url})
        dispatcher._deliver("jewelry-gen-x", run)
        _drained(dispatcher)
        assert receiver.posts() == []
    record = json.loads(LocalBlobStore(root=str(tmp_path)).get_path(record_path("jewelry-gen-x", "run-9")))
    assert record["status"] == "failed" and "could not be read" in record["lastError"]


# ------------------------------------------------------------------ DNS rebinding and address forms


class _RebindingResolver:
    """A name server double for `name`: the first answer is `first`, every later one `then`.
    Other names resolve as usual."""

    def __init__(self, name: str, first: str, then: str) -> None:
        import socket

        self.name, self.first, self.then, self.calls = name, first, then, 0
        self._real = socket.getaddrinfo

    def __call__(self, host: object, port: object, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        import socket

        if host != self.name:
            return self._real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        self.calls += 1
        address = self.first if self.calls == 1 else self.then
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, int(port or 80)))]  # type: ignore[call-overload]


def test_a_name_that_rebinds_to_loopback_after_the_check_gets_no_post(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check sees a public address; a second lookup would say 127.0.0.1, where the receiver
    listens. The POST must go to the address that was checked (unreachable here), never the
    receiver."""
    import socket

    dispatcher = _dispatcher(tmp_path, webhook_attempts=1, webhook_allow_private=False, webhook_timeout_seconds=1.0)
    with webhook_receiver() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        resolver = _RebindingResolver("rebind.example.test", first="192.0.0.9", then="127.0.0.1")
        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        outcome = _send(dispatcher, f"http://rebind.example.test:{port}/hook", b"{}", delivery_id="r")
        monkeypatch.undo()
        assert receiver.posts() == []
    assert outcome.verdict != "delivered"


def test_the_pinned_connection_keeps_the_host_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connecting to the checked address still sends the name in Host (allowed private here, so
    the loopback receiver may be the checked address); a later, different answer is not used."""
    import socket

    dispatcher = _dispatcher(tmp_path, webhook_attempts=1, webhook_timeout_seconds=1.0)
    with webhook_receiver() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        resolver = _RebindingResolver("hooks.example.test", first="127.0.0.1", then="192.0.2.1")
        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        outcome = _send(dispatcher, f"http://hooks.example.test:{port}/hook?x=1", b"{}", delivery_id="r")
        monkeypatch.undo()
        posts = receiver.posts()
    assert outcome.verdict == "delivered", outcome
    assert len(posts) == 1 and posts[0].path == "/hook?x=1"
    assert posts[0].headers["Host"] == f"hooks.example.test:{port}"


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::808:808",  # NAT64 of a public address: the prefix is refused whole
        "64:ff9b:1::a00:1",  # local-use NAT64
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:808:808::1",  # 6to4 of a public address
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::ffff:8.8.8.8",  # IPv4-mapped, even of a public address
    ],
)
def test_ipv6_forms_that_embed_ipv4_are_refused(address: str) -> None:
    with pytest.raises(WebhookRefused, match="loopback or private"):
        check_webhook_url(f"http://[{address}]/hook", allow_private=False)


def test_https_to_the_pinned_address_checks_the_certificate_against_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TLS server name (SNI) and the certificate check use the URL's name, not the address
    connected to: a certificate for the name passes, one for another name does not."""
    import socket
    import ssl

    import trustme

    ca = trustme.CA()
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    for cert_name, delivered in (("hooks.example.test", True), ("other.example.test", False)):
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(cert_name).configure_cert(server_context)
        names: list[str | None] = []
        server_context.sni_callback = lambda _sock, name, _ctx, names=names: names.append(name)  # type: ignore[misc]
        settings = GatewaySettings(
            local_blob_root=str(tmp_path), webhook_secret="s3cret", webhook_allow_private=True, webhook_attempts=1
        )
        store = LocalBlobStore(root=str(tmp_path))
        dispatcher = WebhookDispatcher(
            settings, DagsterRuns(settings), ResultReader(store), store, verify=client_context
        )
        with webhook_receiver(tls=server_context) as receiver:
            port = receiver.url.split(":")[2].split("/")[0]
            monkeypatch.setattr(
                socket, "getaddrinfo", _RebindingResolver("hooks.example.test", "127.0.0.1", "127.0.0.1")
            )
            outcome = _send(dispatcher, f"https://hooks.example.test:{port}/hook", b"{}", delivery_id="r")
            monkeypatch.undo()
            posts = receiver.posts()
        assert (outcome.verdict == "delivered") is delivered, (cert_name, outcome)
        assert names == ["hooks.example.test"]
        assert len(posts) == (1 if delivered else 0)


# ------------------------------------------------------------------ credentials and tokens in the URL


def test_credentials_and_query_tokens_stay_out_of_tags_records_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Run tags, the delivery record and the log show scheme://host:port; the full URL is
    read from the store by a dispatcher that was not there when the run was launched, and its
    outbox marker (which holds it while the delivery is owed) is gone once it ends."""
    from gateway.workflows.launch import webhook_tags as _webhook_tags
    from jewel_dagster.contract import WEBHOOK_URL_TAG

    store = LocalBlobStore(root=str(tmp_path))
    settings = GatewaySettings(local_blob_root=str(tmp_path), webhook_secret="s3cret", webhook_allow_private=True)
    with webhook_receiver(answers=[500, 500]) as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        secret_url = f"http://alice:pa55word@127.0.0.1:{port}/hook?token=t0ken-123"
        tags = _webhook_tags(secret_url, settings, store, "anonymous")()
        assert tags[WEBHOOK_URL_TAG] == f"http://127.0.0.1:{port}"
        assert not any("pa55word" in v or "t0ken" in v for v in tags.values())
        run = RunInfo("run-5", "jewelry_generation", "SUCCESS", [], tags)
        dispatcher = _dispatcher(tmp_path)  # a new gateway: only tags and store
        dispatcher._final_state = lambda workflow_id, run: b"{}"  # type: ignore[method-assign]
        with caplog.at_level("INFO"):
            dispatcher._deliver("jewelry-gen-x", run)
            _drained(dispatcher)
        posts = receiver.posts()
    assert [p.path for p in posts] == ["/hook?token=t0ken-123"] * 3  # the receiver gets the full URL
    assert posts[0].headers["Authorization"].startswith("Basic ")
    record = outbox.read(store, "jewelry-gen-x", "run-5")
    assert record is not None and record.url == f"http://127.0.0.1:{port}" and record.status == "delivered"
    assert "pa55word" not in caplog.text and "t0ken" not in caplog.text  # httpx's client logged it whole
    assert list(outbox.owed(store)) == []  # the marker that held the full URL is gone
    for blob in (tmp_path / "blobs").rglob("*.json"):
        if "/webhooks/" in blob.as_posix() and "/requests/" in blob.as_posix():
            assert "pa55word" not in blob.read_text() and "t0ken" not in blob.read_text()


def test_runs_launched_before_urls_were_stored_still_get_their_webhook(tmp_path: Path) -> None:
    from jewel_dagster.contract import WEBHOOK_URL_TAG

    dispatcher = _dispatcher(tmp_path)
    run = RunInfo("run-6", "jewelry_generation", "SUCCESS", [], {WEBHOOK_URL_TAG: "http://h.example/x?t=1"})
    assert dispatcher._full_url(run) == "http://h.example/x?t=1"


def test_the_runs_owner_picks_the_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jewel_dagster.contract import OWNER_TAG, WEBHOOK_URL_TAG

    dispatcher = _dispatcher(tmp_path)
    monkeypatch.setattr(dispatcher, "_final_state", lambda workflow_id, run: b'{"s":1}')
    with webhook_receiver() as receiver:
        tags = {WEBHOOK_URL_TAG: receiver.url, OWNER_TAG: "alice-id"}
        dispatcher._deliver("jewelry-gen-x", RunInfo("run-7", "jewelry_generation", "SUCCESS", [], tags))
        _drained(dispatcher)
        (post,) = receiver.posts()
    assert post.headers["webhook-id"] == "run-7"
    assert Webhook(caller_secret("s3cret", "alice-id")).verify(post.body, post.headers) == {"s": 1}


def test_two_replicas_that_both_see_a_finished_run_post_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every gateway replica runs a dispatcher; the claim in the shared store picks one."""
    from jewel_dagster.contract import PARTITION_TAG, WEBHOOK_URL_TAG
    from tests.support.e2e_stack import wait_until

    # Polls every 0.1 s (the default is 1 s): the window below is counted in polls, not seconds.
    replicas = [_dispatcher(tmp_path, webhook_poll_seconds=0.1), _dispatcher(tmp_path, webhook_poll_seconds=0.1)]
    started: list[list[int]] = [[], []]  # attempts each poll of each replica's outbox started
    with webhook_receiver() as receiver:
        tags = {WEBHOOK_URL_TAG: receiver.url, PARTITION_TAG: "jewelry-gen-y"}
        raw = {"runId": "run-8", "jobName": "jewelry_generation", "status": "SUCCESS", "tags":
               [{"key": k, "value": v} for k, v in tags.items()], "stepStats": []}  # fmt: skip
        for replica, polls in zip(replicas, started, strict=True):
            monkeypatch.setattr(replica, "_final_state", lambda workflow_id, run: b'{"s":1}')
            monkeypatch.setattr(replica.outbox, "run_due", partial(_counted, replica.outbox.run_due, polls))
            replica._consider(run_info_from(raw), time.time())
        for replica in replicas:
            replica._pool.shutdown(wait=True)  # queued
            replica.outbox.start()  # both replicas' outboxes poll the same store
        wait_until(lambda: receiver.posts(), "the webhook POST", timeout=10, every=0.05)
        # A second attempt would be started by a poll after the first: two more of each replica.
        seen = [len(polls) for polls in started]
        wait_until(
            lambda: all(len(polls) >= n + 2 for polls, n in zip(started, seen, strict=True)),
            "two more polls of each replica",
            timeout=10,
            every=0.05,
        )
        for replica in replicas:
            replica.stop()
        assert len(receiver.posts()) == 1
        assert sum(map(sum, started)) == 1, started  # one attempt, by one replica


def _finished_run(run_id: str, url: str, workflow_id: str = "jewelry-gen-k") -> RunInfo:
    """A finished run as the watcher's listing of Dagster's runs gives it."""
    from jewel_dagster.contract import PARTITION_TAG, WEBHOOK_URL_TAG

    tags = {WEBHOOK_URL_TAG: url, PARTITION_TAG: workflow_id}
    return RunInfo(run_id, "jewelry_generation", "SUCCESS", tags=tags, update_time=time.time())


def _watching(replica: WebhookDispatcher, monkeypatch: pytest.MonkeyPatch, finished: list[RunInfo]) -> None:
    """`replica`'s ticks see `finished` as Dagster's finished runs, and no running run."""
    monkeypatch.setattr(replica, "_finished_runs", lambda after, before: finished)
    monkeypatch.setattr(replica, "_tick_live", lambda: None)
    monkeypatch.setattr(replica, "_final_state", lambda workflow_id, run: b'{"s":1}')


def test_a_replica_killed_between_claiming_and_queuing_a_webhook_is_overtaken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway SIGKILLed after it claimed a finished run's webhook, before queuing it, leaves a
    claim and no record (the soak lost two webhooks so): a live replica, which lost the claim to
    it, queues the webhook once the claim is stale, and not before."""
    from gateway.webhook_outbox.watcher import CLAIM_STALE_SECONDS

    clock = Clock()
    dead, live = _dispatcher(tmp_path, clock), _dispatcher(tmp_path, clock)
    with webhook_receiver() as receiver:
        finished = [_finished_run("run-k", receiver.url)]
        for replica in (dead, live):
            _watching(replica, monkeypatch, finished)
        monkeypatch.setattr(dead, "_deliver", lambda *args: None)  # killed: claimed, never queued
        dead._tick()
        dead._pool.shutdown(wait=True)
        live._tick()
        clock.now += CLAIM_STALE_SECONDS - 1.0
        live._tick()
        live._pool.shutdown(wait=True)
        assert outbox.read(live._store, "jewelry-gen-k", "run-k") is None  # the claim still holds
        live._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        clock.now += 2.0
        live._tick()
        live._pool.shutdown(wait=True)
        record = outbox.read(live._store, "jewelry-gen-k", "run-k")
        assert record is not None and record.status == "pending", record
        drain(inline_dispatcher(live._settings, clock), clock)
        assert [p.headers["webhook-id"] for p in receiver.posts()] == ["run-k"]


def test_a_stopping_gateway_releases_the_claims_it_never_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() cancels queuings still waiting for a thread: their claims are released, so another
    replica queues those runs at its next tick, not after the claims go stale."""
    stopping, other = _dispatcher(tmp_path), _dispatcher(tmp_path)
    with webhook_receiver() as receiver:
        finished = [_finished_run(f"run-s{n}", receiver.url) for n in range(6)]  # more than its 4 threads
        _watching(stopping, monkeypatch, finished)
        # Its threads are busy reading states until it stops (then they give up, as when shutting down).
        monkeypatch.setattr(stopping, "_final_state", lambda workflow_id, run: stopping._stop.wait(30) and None)
        stopping._tick()
        stopping.stop()
        _watching(other, monkeypatch, finished)
        other._tick()
        other._pool.shutdown(wait=True)
        queued = [outbox.read(other._store, "jewelry-gen-k", f"run-s{n}") for n in range(6)]
        assert all(record is not None for record in queued), queued


def test_a_queuing_the_blob_store_fails_is_tried_again_by_the_same_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone gateway whose first write of a run's webhook fails (the store away a moment) queues
    it at a later tick: the failed queuing releases its claim and the run is looked at again."""
    from gateway.webhook_outbox import watcher
    from jewel_dagster.resources.blob_store import BlobStoreError
    from tests.support.e2e_stack import wait_until

    replica = _dispatcher(tmp_path)
    failures = [BlobStoreError("the store is away")]
    enqueue = outbox.enqueue

    def flaky(*args: object) -> bool:
        if failures:
            raise failures.pop()
        return enqueue(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(watcher.outbox, "enqueue", flaky)
    with webhook_receiver() as receiver:
        _watching(replica, monkeypatch, [_finished_run("run-f", receiver.url)])
        replica._tick()
        wait_until(lambda: not replica._queuing and not failures, "the failed queuing", timeout=10, every=0.05)
        assert outbox.read(replica._store, "jewelry-gen-k", "run-f") is None
        replica._tick()
        wait_until(lambda: outbox.read(replica._store, "jewelry-gen-k", "run-f") is not None, "the queuing", timeout=10)
        replica.stop()


def test_a_contested_run_whose_claim_cannot_be_read_holds_up_no_other_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One contested run whose claim keeps failing is logged and tried again; the tick goes on
    to the runs that finished meanwhile."""
    from gateway.claims import ClaimError
    from gateway.webhook_outbox import watcher

    replica = _dispatcher(tmp_path)
    claim = watcher.claim

    def broken_for_one(store: object, name: str, *args: object, **kwargs: object) -> object:
        if "run-bad" in name:
            raise ClaimError("50 generations taken")
        return claim(store, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(watcher, "claim", broken_for_one)
    with webhook_receiver() as receiver:
        bad = _finished_run("run-bad", receiver.url)
        replica._contested["run-bad"] = ("jewelry-gen-k", bad, replica._clock())
        _watching(replica, monkeypatch, [_finished_run("run-good", receiver.url)])
        replica._tick()
        replica._pool.shutdown(wait=True)
    assert outbox.read(replica._store, "jewelry-gen-k", "run-good") is not None
    assert "run-bad" in replica._contested  # looked at again next tick


def test_a_replica_overtaken_while_reading_leaves_the_queued_body_as_it_is(tmp_path: Path) -> None:
    """The POSTed message under one webhook-id stays one body: a late replica's queuing of the same
    delivery (its own read of the state, maybe different) writes nothing."""
    from gateway.webhook_outbox.outbox import body_of
    from tests.support.outbox import outbox_settings

    settings, clock = outbox_settings(tmp_path), Clock()
    first = queue(settings, "http://h.example/x", "run-b", clock, body='{"first":1}')
    assert not outbox.enqueue(LocalBlobStore(root=str(tmp_path)), first, "http://h.example/x", b'{"late":1}')
    assert body_of(LocalBlobStore(root=str(tmp_path)), first) == b'{"first":1}'


def _counted(run_due: Callable[[], int], polls: list[int]) -> int:
    """One poll of an outbox, its count of started attempts kept in `polls`."""
    polls.append(run_due())
    return polls[-1]


@pytest.mark.parametrize(
    ("behaviour", "delivered"),
    [("huge", True), ("trickle-body", True), ("trickle-headers", False)],
)
def test_a_hostile_receiver_costs_a_few_kb_and_ends_at_the_deadline(
    tmp_path: Path, behaviour: str, delivered: bool
) -> None:
    """Issue 29, finding 2: a 300 MB answer raised the gateway's memory by 600 MB; a trickle held a
    delivery thread 8 s with a 2 s timeout (the timeout was per read)."""
    dispatcher = _dispatcher(tmp_path, webhook_attempts=1, webhook_timeout_seconds=1.0)
    with hostile_receiver(behaviour, seconds=8.0) as url:
        tracemalloc.start()
        started = time.monotonic()
        try:
            outcome = _send(dispatcher, url, b"{}", delivery_id="run-h")
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (outcome.verdict == "delivered") is delivered, outcome
    assert peak < 5 * 1024 * 1024, f"the delivery allocated {peak / 1e6:.0f} MB"
    assert elapsed < 2.5, f"the delivery took {elapsed:.1f} s with a 1 s deadline"  # 1 s + a loaded machine
    if not delivered:
        assert outcome.error is not None and "within 1 s" in outcome.error


class _HeldNames:
    """Names under `.slow.test` resolve only once `release` is set (a name server that does not
    answer); `fast.test` resolves at once. `held` counts the lookups waiting."""

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.held = 0
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        import socket

        if host.endswith(".slow.test"):
            with self._lock:
                self.held += 1
            self.release.wait(30)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", port))]


def test_one_callers_slow_names_do_not_delay_another_callers_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 29, finding 4: lookups ran on 4 shared threads; a caller's slow names made every
    other caller's URLs "cannot be resolved". Mallory's names are held until alice's lookup is
    done (they took 3 s each before: the test ~5 s, now ~0.1 s); on shared threads alice's would
    wait out its 5 s deadline and be refused."""
    import socket
    import threading

    from tests.support.e2e_stack import wait_until

    names = _HeldNames()
    monkeypatch.setattr(socket, "getaddrinfo", names)
    asked: list[str] = []
    slow = [
        threading.Thread(target=_try_check, args=(f"http://n{i}.slow.test/hook", "mallory", asked), daemon=True)
        for i in range(8)
    ]
    for thread in slow:
        thread.start()
    try:
        # Mallory's lookups hold their threads: all 8 asked, as many held as her places allow.
        wait_until(lambda: len(asked) == 8 and names.held >= 2, "mallory's held lookups", timeout=10, every=0.01)
        started = time.monotonic()
        assert check_webhook_url("http://fast.test/hook", allow_private=False, caller="alice") == ["8.8.8.8"]
        assert time.monotonic() - started < 1.0
    finally:
        names.release.set()
        for thread in slow:
            thread.join(timeout=15)


def _try_check(url: str, caller: str, asked: list[str]) -> None:
    asked.append(url)
    try:
        check_webhook_url(url, allow_private=False, caller=caller)
    except WebhookRefused:
        pass  # mallory's own lookups may time out: only alice's matter here


def test_a_lookup_that_fails_at_delivery_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    real = socket.getaddrinfo
    failures = [socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")]

    def flaky(host: str, *args: object, **kwargs: object) -> object:
        if failures:
            raise failures.pop()
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    dispatcher = _dispatcher(tmp_path)
    clock = Clock()
    with webhook_receiver() as receiver:
        monkeypatch.setattr(socket, "getaddrinfo", flaky)
        queue(dispatcher._settings, receiver.url, "run-dns", clock)
        drain(inline_dispatcher(dispatcher._settings, clock), clock)
        monkeypatch.undo()
    record = outbox.read(dispatcher._store, "jewelry-gen-w", "run-dns")
    assert record is not None and record.status == "delivered" and record.attempts == 2, record
    assert len(receiver.posts()) == 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX", "https://hooks.slack.com"),
        ("https://discord.com/api/webhooks/123/s3cr3t-token?wait=true", "https://discord.com"),
        ("http://user:pw@[2001:db8::1]:8443/a/b#frag", "http://[2001:db8::1]:8443"),
    ],
)
def test_redaction_keeps_scheme_host_and_port_only(url: str, shown: str) -> None:
    """Issue 29, finding 9: the path of Slack- and Discord-style URLs is their secret."""
    from gateway.webhooks import redact

    assert redact(url) == shown
