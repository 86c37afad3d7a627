"""The model-service clients retry one call on its own (resources/http_services.py): a transient
failure (429, 5xx, a timeout) is tried again within the call's attempts and budget, with waits a
`Retry-After` may set but never beyond the cap, and a cancel ends the waiting. Against a real
loopback server that answers from a script (issue 28: one 503 failed a whole step before)."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

import dagster as dg
import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from jewel_dagster import tracing
from jewel_dagster.resources.http_services import HttpBackend, HttpImageManipulator, TransientServiceError
from jewel_dagster.resources.selection import build_resources
from jewel_dagster.settings import PipelineSettings
from tests.support.e2e_stack import wait_until
from tests.support.handler_server import handler_server

ZOOM = {"needs_background_removal": False, "score": 0.1, "threshold": 0.25}
IMAGE = np.zeros((4, 4, 3), np.uint8)


@dataclass(frozen=True)
class Answer:
    """A scripted answer, `delay` seconds after the request: `body` (default: a zoom check, or a
    `detail` for an error) sent whole, or in 16-byte pieces `every` so many seconds; `length`: with
    a Content-Length header."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    every: float = 0.0
    length: bool = True
    delay: float = 0.0


OK = Answer(200)


@dataclass
class ScriptedService:
    """Answers each POST with the next scripted status (200 with a zoom check once the script is
    used up) and counts them."""

    url: str = ""
    script: list[Answer] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)  # ends a trickle at teardown

    def seen(self) -> int:
        with self.lock:
            return self.requests


@contextmanager
def scripted_service(*script: Answer) -> Iterator[ScriptedService]:
    service = ScriptedService(script=list(script))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with service.lock:
                service.requests += 1
                answer = service.script.pop(0) if service.script else OK
            if answer.delay and service.stop.wait(answer.delay):
                return
            body = answer.body
            if body is None:
                body = json.dumps(ZOOM if answer.status == 200 else {"detail": f"scripted {answer.status}"}).encode()
            self.send_response(answer.status)
            for name, value in {"Content-Type": "application/json", **answer.headers}.items():
                self.send_header(name, value)
            if answer.length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            pieces = [body[i : i + 16] for i in range(0, len(body), 16)] if answer.every else [body]
            try:
                for piece in pieces:
                    self.wfile.write(piece)
                    if answer.every and service.stop.wait(answer.every):
                        return
            except OSError:  # the client gave up on the answer
                pass

        def log_message(self, *args: object) -> None:
            pass

    with handler_server(Handler) as server:
        service.url = f"http://127.0.0.1:{server.server_address[1]}/image-manipulator"
        try:
            yield service
        finally:
            service.stop.set()


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """The clients' spans, kept in memory (the process's tracer provider is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", lambda: provider.get_tracer("test"))
    return exporter


def _client(service: ScriptedService, **config: Any) -> HttpImageManipulator:
    # Waits of 10 ms: the tests count requests, not seconds.
    return HttpImageManipulator(base_url=service.url, **{"retry_wait_seconds": 0.01, **config})


def _retry_waits(span: ReadableSpan) -> list[float]:
    return [float(e.attributes["jewel.retry_wait_seconds"]) for e in span.events if e.name == "retry"]  # type: ignore[index]


def test_a_call_answered_503_twice_succeeds_on_its_third_try(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    with scripted_service(Answer(503), Answer(503), OK) as service, caplog.at_level(logging.WARNING):
        assert _client(service).check_zoom(IMAGE).score == 0.1
        assert service.seen() == 3
    # The warnings name the call first: they show among the run's events, not under the step.
    warnings = [record.getMessage() for record in caplog.records if record.name == "jewel_dagster.services"]
    assert [message.split(" in ")[0] for message in warnings] == [
        "ImageManipulator POST /zoom-check: try 2 of 3",
        "ImageManipulator POST /zoom-check: try 3 of 3",
    ]
    assert all(message.endswith("answered 503: scripted 503") for message in warnings)
    (span,) = spans.get_finished_spans()
    assert [e.attributes["jewel.attempt"] for e in span.events if e.name == "retry"] == [1, 2]  # type: ignore[index]
    assert span.attributes is not None and span.attributes["jewel.attempts"] == 3
    assert span.status.is_ok


def test_a_permanent_400_fails_at_once(spans: InMemorySpanExporter) -> None:
    with scripted_service(Answer(400), OK) as service:
        with pytest.raises(dg.Failure, match="400: scripted 400") as failure:
            _client(service).check_zoom(IMAGE)
        assert failure.value.allow_retries is False
        assert service.seen() == 1
    (span,) = spans.get_finished_spans()
    assert span.attributes is not None and span.attributes["jewel.attempts"] == 1


def test_retries_stop_at_the_attempt_limit_and_leave_the_rest_to_the_step() -> None:
    with scripted_service(*[Answer(503)] * 10) as service:
        with pytest.raises(TransientServiceError, match="503: scripted 503"):
            _client(service, call_attempts=4).check_zoom(IMAGE)
        assert service.seen() == 4
    with scripted_service(Answer(429), OK) as service:
        with pytest.raises(TransientServiceError, match="429"):
            _client(service, call_attempts=1).check_zoom(IMAGE)
        assert service.seen() == 1


def test_retry_after_is_honoured_up_to_the_cap(spans: InMemorySpanExporter) -> None:
    script = (Answer(429, {"Retry-After": "0.2"}), Answer(503, {"Retry-After": "3600"}), OK)
    with scripted_service(*script) as service:
        _client(service, retry_wait_max_seconds=0.3).check_zoom(IMAGE)
        assert service.seen() == 3
    (span,) = spans.get_finished_spans()
    assert _retry_waits(span) == [0.2, 0.3]  # the service's wait, then the cap instead of an hour


def test_retry_after_as_an_http_date(spans: InMemorySpanExporter) -> None:
    """An hour ahead waits the cap; a date already past does not wait."""
    now = datetime.now(UTC)
    ahead, past = (format_datetime(now + timedelta(hours=sign), usegmt=True) for sign in (1, -1))
    script = (Answer(503, {"Retry-After": ahead}), Answer(503, {"Retry-After": past}), OK)
    with scripted_service(*script) as service:
        _client(service, retry_wait_max_seconds=0.3).check_zoom(IMAGE)
        assert service.seen() == 3
    (span,) = spans.get_finished_spans()
    assert _retry_waits(span) == [0.3, 0.0]


def test_no_retry_waits_past_the_calls_budget() -> None:
    """A Retry-After that would end past the call's budget ends the call instead of waiting. (A
    budget of 30 s: a 1 s one also cut the first try's timeouts to 1 s, short on a loaded machine.)"""
    with scripted_service(Answer(503, {"Retry-After": "60"}), OK) as service:
        with pytest.raises(TransientServiceError, match="503: scripted 503"):
            _client(service, call_budget_seconds=30.0, retry_wait_max_seconds=60.0).check_zoom(IMAGE)
        assert service.seen() == 1


def test_a_connect_timeout_is_retried_within_the_call() -> None:
    """Nothing was sent, and the connect timeout (5 s) leaves most of the call's time: retried."""
    tries: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tries.append(request.url.path)
        if len(tries) == 1:
            raise httpx.ConnectTimeout("scripted connect timeout", request=request)
        return httpx.Response(200, json=ZOOM)

    client = HttpImageManipulator(base_url="http://image-manipulator.test", retry_wait_seconds=0.01)
    client._http = httpx.Client(base_url=client.base_url, transport=httpx.MockTransport(handler))
    assert client.check_zoom(IMAGE).score == 0.1
    assert tries == ["/zoom-check", "/zoom-check"]


def test_a_retry_starts_only_with_time_enough_left() -> None:
    """The service asks for 9 s of a 10 s budget: a retry then would have under 1 s, less than its
    minimum (a quarter of the budget here), so the call ends at once with the service's 503."""
    with scripted_service(Answer(503, {"Retry-After": "9"}), OK) as service:
        with pytest.raises(TransientServiceError, match="503: scripted 503"):
            _client(service, call_budget_seconds=10.0, retry_wait_max_seconds=9.0).check_zoom(IMAGE)
        assert service.seen() == 1


def test_a_call_out_of_time_names_the_failure_before() -> None:
    """A 503, then an answer 30 s late: the retry's timeout is what is left of the call's 6 s, not
    the 30 s timeout, and the call's error carries the 503's message beside the timeout."""
    with scripted_service(Answer(503), Answer(200, delay=30.0)) as service:
        client = _client(service, timeout_seconds=30.0, call_budget_seconds=6.0)
        with pytest.raises(TransientServiceError) as error:
            client.check_zoom(IMAGE)
        assert service.seen() == 2
    message = str(error.value)
    assert "timed out after" in message and "timed out after 30 s" not in message
    assert message.endswith(f"the try before: ImageManipulator ({service.url}/zoom-check) answered 503: scripted 503")


def test_an_answer_that_trickles_ends_at_the_attempts_deadline() -> None:
    """httpx bounds each read, not the answer: 16 bytes every 0.5 s (20 s in all) would keep a
    call with a 2 s timeout waiting for all of it; the attempt ends at its deadline instead."""
    trickle = Answer(200, body=b" " * 16 * 40 + json.dumps(ZOOM).encode(), every=0.5)
    with scripted_service(trickle) as service:
        with pytest.raises(TransientServiceError, match="did not answer within 2 s"):
            _client(service, timeout_seconds=2.0, call_attempts=1).check_zoom(IMAGE)
        assert service.seen() == 1


@pytest.mark.parametrize("length", [True, False], ids=["declared", "undeclared"])
def test_an_answer_beyond_the_size_cap_fails_for_good(length: bool) -> None:
    with scripted_service(Answer(200, body=b" " * 5000, length=length), OK) as service:
        with pytest.raises(dg.Failure, match="more than 1000 bytes") as failure:
            _client(service, max_answer_bytes=1000).check_zoom(IMAGE)
        assert failure.value.allow_retries is False
        assert service.seen() == 1


def test_a_cancelled_run_stops_retrying(spans: InMemorySpanExporter) -> None:
    """The service asks for a minute's wait; the run is cancelled during it: the call ends as a
    cancel (no step retry), without another request."""
    with dg.instance_for_test() as instance, scripted_service(*[Answer(503, {"Retry-After": "60"})] * 3) as service:
        run = instance.add_run(
            dg.DagsterRun(job_name="j", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED)
        )
        client = _client(service, retry_wait_max_seconds=60.0)
        client._instance, client._run_id = instance, run.run_id
        with ThreadPoolExecutor(max_workers=1) as pool:
            call: Future[Any] = pool.submit(client.check_zoom, IMAGE)
            wait_until(lambda: service.seen() == 1, "the first request", timeout=30, every=0.02)
            instance.report_run_canceling(run)
            with pytest.raises(dg.Failure, match="cancelled") as failure:
                call.result(timeout=30)  # the wait polls every 0.2 s; the service asked for 60 s
        assert failure.value.allow_retries is False
        assert service.seen() == 1
    (span,) = spans.get_finished_spans()
    assert span.attributes is not None and span.attributes["jewel.attempts"] == 1  # no try after the 503


def test_the_setting_gives_every_http_client_its_attempts(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    urls = {name: f"http://127.0.0.1:1/{name}" for name in ("image_manipulator_url", "birefnet_url", "sam3_url")}
    urls["a100_server_url"] = "http://127.0.0.1:1/a100"

    def attempts() -> set[int]:
        resources = build_resources(PipelineSettings(local_blob_root=str(tmp_path), **urls))
        clients = [r for r in resources.values() if isinstance(r, HttpBackend)]
        assert len(clients) == 5
        return {client.call_attempts for client in clients}

    assert attempts() == {3}
    monkeypatch.setenv("SERVICE_CALL_ATTEMPTS", "1")
    assert attempts() == {1}
