"""HTTP clients for the model services (image manipulator, BiRefNet, SAM3, A100 server).

The contracts are documented in `docs/service-contracts.md`; `reference_server.py` serves them.
Every call has a timeout. Failures are of two kinds:

- transient (connection error, timeout, 429, 5xx): the call itself is tried again, up to
  `call_attempts` (3) tries in all, with exponential backoff and jitter (0.5 s, then 1 s, at most
  `retry_wait_max_seconds`, 4 s, which also caps a `Retry-After` the service sends), all within
  `call_budget_seconds` (the timeout, 120 s, by default): no wait runs and no attempt starts past
  it (nor with less than `MIN_ATTEMPT_SECONDS` left), and a retry's timeouts are cut to what is
  left; a call that ends out of time names the failure before. An attempt ends at its deadline
  even while its answer trickles in (httpx's timeouts bound each read, not the whole), and an
  answer beyond `max_answer_bytes` (256 MiB) is permanent. A step makes several calls (resize and
  zoom check; Flux then SAM3 on its image), so one 503 no longer re-does the step's other calls:
  with the step's RetryPolicy alone, a 30 % failure rate failed 7 requests of 46, now none (issue
  28). The waits stop at a cancel: the run's status is read before each attempt and every 0.2 s
  of a wait.
  Each retry is an event on the call's span and a warning in the run's log. When the attempts or
  the budget run out -> `TransientServiceError`, which the step's RetryPolicy retries in turn;
- permanent (any other 4xx, a response we cannot decode) -> `dg.Failure(allow_retries=False)`
  naming the service, the status and the service's message, at the first attempt.

Images travel as binary multipart parts and binary answer bodies by default, or as base64 in
JSON (`wire_mode="json"`, setting `SERVICE_WIRE`) for a service that speaks nothing else (`wire.py`).
An answer is read by its content type, whichever mode asked for it. An image decoded from a
binary answer is sent on, when a later call sends it, as the bytes it came as (`ANSWERED_IMAGES`).

Every client of a process shares one TLS context (`tls_context`): httpx builds a new one for each
client it makes (the CA bundle read and parsed, ~21 ms of CPU), and a run worker made one client
per service on its first call, two of them (the image manipulator's resize, SAM3) ahead of the
first SAM3 call (issue 28). The warm code server's forkserver builds it, and imports what httpx
imports at its first client (~14 ms), before any run worker is forked (`warm_service_clients`).
"""

from __future__ import annotations

import functools
import json
import math
import ssl
import time
from collections.abc import Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import dagster as dg
import httpx
import numpy as np
import tenacity
from opentelemetry import trace
from pydantic import Field, PrivateAttr

from jewel_dagster.resources import wire
from jewel_dagster.resources.services import (
    BackgroundRemover,
    Generation,
    ImageGenerator,
    ImageManipulator,
    MaskRefiner,
    Segmenter,
    ServiceBackend,
    ZoomCheck,
)
from jewel_dagster.vision.classical import PixelPoint
from jewel_dagster.vision.imaging import CanvasStroke, CanvasTransform, Mask, RGBImage


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS context httpx would build for a client (certifi's CA bundle, or SSL_CERT_FILE /
    SSL_CERT_DIR from the environment), built once per process: a context holds no socket or
    thread, so sharing it across the fork is safe.

    One caveat: httpcore sets the context's ALPN list again at each new TLS connection, and
    OpenSSL copies that list in `SSL_new`, which CPython runs without the GIL; two threads opening
    TLS connections through this context at the same instant could race on it. No step does that
    today (each step's calls through these clients open one connection at a time; Gemini's SDK has
    its own client). A step that starts two of these clients' calls at once should first open one
    connection, or give each thread its own context."""
    return httpx.create_ssl_context()


def warm_service_clients() -> None:
    """Build the shared TLS context and one client, closed unused: what a process's first client
    costs (its context, httpx's transport modules) is then paid here, e.g. in the forkserver."""
    httpx.Client(verify=tls_context()).close()


# The images this process decoded from binary answers, with their bytes: the resize's canvas is
# the zoom check's image, the Flux image SAM3's (the metrics), sent as they came (`wire.AnsweredImages`).
ANSWERED_IMAGES = wire.AnsweredImages()


class TransientServiceError(Exception):
    """A failure worth retrying: the call retries it, then raises it for the step's RetryPolicy.

    `retry_after`: the seconds the service asked for in a `Retry-After` header, if it sent one;
    `out_of_time`: a try that timed out at the end of its call's budget, not at its own timeout."""

    def __init__(self, message: str, retry_after: float | None = None, *, out_of_time: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.out_of_time = out_of_time


CANCEL_POLL_SECONDS = 0.2  # how often a retry's wait reads the run's status
# The least time a retry starts with: the connect timeout, at least 1 s, at most a quarter of the
# call's budget. Without it a retry was sent with 8 ms left, timed out, and the call's error said
# "timed out after 0.0079 s" instead of the service's 503.
MIN_ATTEMPT_SECONDS = 1.0
MIN_ATTEMPT_SHARE = 0.25


class HttpBackend(ServiceBackend):
    """Shared plumbing: one pooled httpx client per resource, images binary or base64 JSON."""

    base_url: str
    timeout_seconds: float = 120.0
    connect_timeout_seconds: float = 5.0
    wire_mode: wire.WireMode = "binary"
    image_encoding: wire.ImageEncoding = "bmp"
    call_attempts: int = Field(default=3, ge=1, description="Tries of one call at a transient failure (1: no retry).")
    retry_wait_seconds: float = Field(default=0.5, ge=0, description="The wait before the first retry; it doubles.")
    retry_wait_max_seconds: float = Field(
        default=4.0, ge=0, description="The longest wait between tries, a service's Retry-After included."
    )
    call_budget_seconds: float | None = Field(
        default=None, gt=0, description="The most one call takes, its retries included (None: timeout_seconds)."
    )
    max_answer_bytes: int = Field(
        default=256 * 2**20, gt=0, description="The largest answer body read (a canvas is ~16 MB); more fails the call."
    )
    _http: httpx.Client | None = PrivateAttr(default=None)

    @property
    def service_name(self) -> str:
        return type(self).__name__.removeprefix("Http")

    @property
    def backend_name(self) -> str:
        return f"http:{self.base_url}"

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                base_url=self.base_url.rstrip("/"),
                verify=tls_context(),
                timeout=httpx.Timeout(self.timeout_seconds, connect=self.connect_timeout_seconds),
                limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
            )
        return self._http

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _post(self, path: str, images: dict[str, np.ndarray], fields: dict[str, Any] | None = None) -> dict[str, Any]:
        """One call, in a client span of the request's trace (an error marks the span failed).

        Returns the answer's fields; an image answered as the body sits under `wire.BODY` as bytes,
        one answered in JSON under its field name as base64 text: `wire.decode_*` take either."""
        return self._prepared_post(path, images, fields)()

    def _prepared_post(
        self, path: str, images: dict[str, np.ndarray], fields: dict[str, Any] | None = None
    ) -> Callable[[], dict[str, Any]]:
        """`_post` in two halves: the request is encoded now, the call made by what is returned."""
        request = self._request(images, fields or {})

        def call() -> dict[str, Any]:
            with self.call_span(f"{self.service_name} POST {path}", **{"jewel.service": self.service_name}) as span:
                return self._tries(span, path, request)

        return call

    def _tries(self, span: trace.Span, path: str, request: dict[str, Any]) -> dict[str, Any]:
        """The tries of one call within its budget. A call that ends out of time says why the
        tries before failed: the service's 503 tells more than the last try's timeout."""
        budget = self.call_budget_seconds or self.timeout_seconds
        deadline = time.monotonic() + budget
        failures: list[TransientServiceError] = []

        def attempt() -> dict[str, Any]:
            span.set_attribute("jewel.attempts", len(failures) + 1)  # every try before it failed
            try:
                return self._answer(path, request, deadline)
            except TransientServiceError as exc:
                failures.append(exc)
                raise

        try:
            return self._retrying(span, path, deadline, budget)(attempt)
        except TransientServiceError as exc:
            earlier = [failure for failure in failures[:-1] if not failure.out_of_time]
            if not exc.out_of_time or not earlier:
                raise
            raise TransientServiceError(
                f"{exc}, the end of the call's {budget:.3g} s; the try before: {earlier[-1]}"
            ) from exc

    def _retrying(self, span: trace.Span, path: str, deadline: float, budget: float) -> tenacity.Retrying:
        """The retries of one call: transient failures only, within the attempts and the budget,
        each retry starting with its minimum time (`MIN_ATTEMPT_SECONDS`) left."""
        least = min(max(self.connect_timeout_seconds, MIN_ATTEMPT_SECONDS), budget * MIN_ATTEMPT_SHARE)

        def stop(state: tenacity.RetryCallState) -> bool:
            out_of_time = time.monotonic() + state.upcoming_sleep > deadline - least
            return state.attempt_number >= self.call_attempts or out_of_time

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientServiceError),
            stop=stop,
            wait=self._wait,
            sleep=self._sleep_unless_cancelled,
            before_sleep=functools.partial(self._note_retry, span, path),
            reraise=True,
        )

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Exponential with jitter, or the service's Retry-After; never more than the cap."""
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, TransientServiceError) and error.retry_after is not None:
            return min(error.retry_after, self.retry_wait_max_seconds)
        backoff = tenacity.wait_exponential_jitter(
            initial=self.retry_wait_seconds, max=self.retry_wait_max_seconds, jitter=self.retry_wait_seconds / 2
        )
        return backoff(state)

    def _sleep_unless_cancelled(self, seconds: float) -> None:
        """Wait before a retry in short slices, ending it (and the call) once the run is cancelled."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._refuse_if_cancelled()
            time.sleep(min(left, CANCEL_POLL_SECONDS))
        self._refuse_if_cancelled()

    def _note_retry(self, span: trace.Span, path: str, state: tenacity.RetryCallState) -> None:
        """What an operator sees of a flaky service: an event on the call's span, a warning line."""
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.upcoming_sleep
        span.add_event(
            "retry",
            {"jewel.attempt": state.attempt_number, "jewel.retry_wait_seconds": round(wait, 3), "error": str(error)},
        )
        # The run's log manager writes it as a run event (no step key): the call first, so that it
        # reads on its own beside the other steps' lines.
        self._log.warning(
            f"{self.service_name} POST {path}: try {state.attempt_number + 1} of {self.call_attempts}"
            f" in {wait:.2f} s, after {error}"
        )

    def _request(self, images: dict[str, np.ndarray], fields: dict[str, Any]) -> dict[str, Any]:
        """httpx keyword arguments of one call in this resource's wire mode."""
        if self.wire_mode == "json":
            return {"json": {**{name: wire.encode_array(array) for name, array in images.items()}, **fields}}
        files: dict[str, tuple[str | None, bytes | str, str]] = {}
        for name, array in images.items():
            content_type = wire.CONTENT_TYPES[self.image_encoding]
            data = ANSWERED_IMAGES.bytes_of(array, content_type)
            if data is None:
                data, content_type = wire.encode_binary(array, self.image_encoding)
            files[name] = (f"{name}.{content_type.removeprefix('image/')}", data, content_type)
        if fields:
            files[wire.FIELDS_PART] = (None, wire.encode_fields(fields), "application/json")
        accept = f"{wire.CONTENT_TYPES[self.image_encoding]}, image/*;q=0.9, application/json;q=0.5"
        return {"files": files, "headers": {"Accept": accept}}

    def _answer(self, path: str, request: dict[str, Any], deadline: float) -> dict[str, Any]:
        """One attempt of a call; its time is cut to what is left of the call's budget.

        httpx's timeouts bound each connect, write and read, not an attempt: a server that sent its
        headers after 0.8 s, then 16 bytes every 0.8 s, had a call with a 1 s timeout answered after
        4.1 s, and a trickle could go on without end. The body is therefore read as it arrives,
        and the attempt ends at its deadline as each read returns (one read still waits up to its
        read timeout, the attempt's time at most)."""
        where = f"{self.service_name} ({self.base_url.rstrip('/')}{path})"
        seconds = min(self.timeout_seconds, max(deadline - time.monotonic(), 0.001))
        timeout = httpx.Timeout(seconds, connect=min(self.connect_timeout_seconds, seconds))
        attempt_deadline = time.monotonic() + seconds
        cut = seconds < self.timeout_seconds  # the call's budget, not the timeout, ends this try
        try:
            with self._client().stream("POST", path, **request, timeout=timeout) as response:
                content = self._read_body(response, where, attempt_deadline, seconds, cut)
        except httpx.TimeoutException as exc:
            raise TransientServiceError(f"{where} timed out after {seconds:.3g} s", out_of_time=cut) from exc
        except httpx.TransportError as exc:
            raise TransientServiceError(f"{where} is unreachable: {exc}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientServiceError(
                f"{where} answered {response.status_code}: {_message(content, response.reason_phrase)}",
                _retry_after(response),
            )
        if response.status_code >= 400:
            raise dg.Failure(
                description=f"{where} answered {response.status_code}: {_message(content, response.reason_phrase)}",
                allow_retries=False,
            )
        try:
            content_type = response.headers.get("content-type", "")
            if content_type.startswith("image/"):
                fields = wire.decode_fields(response.headers.get(wire.FIELDS_HEADER))
                return {**fields, wire.BODY: content, wire.BODY_TYPE: content_type.split(";")[0].strip()}
            body = json.loads(content)
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
            return body
        except ValueError as exc:
            raise dg.Failure(description=f"{where} sent an undecodable response: {exc}", allow_retries=False) from exc

    def _read_body(self, response: httpx.Response, where: str, deadline: float, seconds: float, cut: bool) -> bytes:
        """The answer's body, within the attempt's deadline and `max_answer_bytes`.

        Each chunk is what one read of the socket gave (httpcore reads up to 64 KiB): a 16 MiB
        answer is 257 chunks, read on loopback in a median 79 ms against 76 ms by httpx's own
        `post` (n=15 each, interleaved, load ~2)."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_answer_bytes:
            raise self._too_large(where)
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            if time.monotonic() > deadline:
                raise TransientServiceError(f"{where} did not answer within {seconds:.3g} s", out_of_time=cut)
            size += len(chunk)
            if size > self.max_answer_bytes:
                raise self._too_large(where)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, where: str) -> dg.Failure:
        return dg.Failure(
            description=f"{where} answered more than {self.max_answer_bytes} bytes (max_answer_bytes)",
            allow_retries=False,
        )

    def _decode(self, decode: Any, body: dict[str, Any], field: str) -> Any:
        """A field of the answer; an image field comes from the binary body when there is one."""
        binary = wire.BODY in body and field in ("image", "mask")
        try:
            value = decode(body[wire.BODY] if binary else body[field])
        except (KeyError, ValueError, TypeError) as exc:
            raise dg.Failure(
                description=f"{self.service_name} sent an undecodable '{field}': {exc}", allow_retries=False
            ) from exc
        if binary and field == "image":
            ANSWERED_IMAGES.remember(value, body[wire.BODY], str(body.get(wire.BODY_TYPE, "")))
        return value


def _retry_after(response: httpx.Response) -> float | None:
    """The seconds of a `Retry-After` header (a number, or an HTTP date); None without one."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def _message(content: bytes, reason: str) -> str:
    """The service's message: a JSON body's `detail`, else the body's start, else the reason."""
    try:
        body = json.loads(content)
        if isinstance(body, dict) and "detail" in body:
            return str(body["detail"])
    except ValueError:
        pass
    return content[:300].decode("utf-8", "replace") or reason


class HttpImageManipulator(HttpBackend, ImageManipulator):
    def resize_to_canvas(self, image: RGBImage) -> tuple[RGBImage, CanvasTransform]:
        body = self._post("/resize", {"image": image})
        canvas = self._decode(wire.decode_image, body, "image")
        transform = self._decode(CanvasTransform.from_dict, body, "transform")
        return canvas, transform

    def check_zoom(self, image: RGBImage) -> ZoomCheck:
        body = self._post("/zoom-check", {"image": image})
        try:
            return ZoomCheck(bool(body["needs_background_removal"]), float(body["score"]), float(body["threshold"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise dg.Failure(description=f"ImageManipulator sent an undecodable zoom check: {exc}") from exc


class HttpBackgroundRemover(HttpBackend, BackgroundRemover):
    def remove_background(self, image: RGBImage) -> RGBImage:
        body = self._post("/remove-background", {"image": image})
        return self._decode(wire.decode_image, body, "image")


class HttpSegmenter(HttpBackend, Segmenter):
    def segment(self, image: RGBImage, points: Sequence[PixelPoint]) -> Mask:
        body = self._post(
            "/segment",
            {"image": image},
            {"points": [[p.x, p.y] for p in points], "labels": [p.label for p in points]},
        )
        return self._decode(wire.decode_mask, body, "mask")


class HttpMaskRefiner(HttpBackend, MaskRefiner):
    def refine(self, mask: Mask, strokes: Sequence[CanvasStroke]) -> Mask:
        body = self._post(
            "/refine-mask",
            {"mask": mask},
            {"strokes": [{"points": [list(p) for p in s.points], "mode": s.mode, "size": s.size} for s in strokes]},
        )
        return self._decode(wire.decode_mask, body, "mask")


class HttpFluxGenerator(HttpBackend, ImageGenerator):
    def generate(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Generation:
        return self.prepare(image, mask, seed, prompt)()

    def prepare(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Callable[[], Generation]:
        """The canvas and the mask are encoded now (~25 ms quiet, a 16 MB BMP and a 1-bit PNG)."""
        post = self._prepared_post("/generate", {"image": image, "mask": mask}, {"seed": seed, "prompt": prompt})

        def call() -> Generation:
            body = post()
            image = self._decode(wire.decode_image, body, "image")
            return Generation(image=image, model=str(body.get("model", "flux")))

        return call
