"""A reference model server: every service contract, served by the local implementations.

    python -m devtools.reference_server --port 9000 \
        --latency sam3/segment=1.0 --latency a100/generate=3.0 --failure-rate 0.3

Each service lives under its own prefix (`/image-manipulator`, `/birefnet`, `/sam3`, `/a100`),
so each `*_URL` setting points at `http://host:port/<prefix>`, and each has `GET <prefix>/health`.
Knobs model slow and flaky GPU services for tests, benchmarks and docker-compose: a fixed
latency per endpoint, a random failure rate (503), hanging the next N calls, and rejecting
calls with a fixed 4xx. They can be changed at run time with `PUT /_knobs`; `GET /_stats`
counts calls per endpoint so a test can see retries happen, `GET /_stats/wire` the content types
they came as, `GET /_stats/timing` when each call came and was answered (a benchmark's
timeline). Every endpoint speaks both wire modes of `docs/service-contracts.md`: a multipart
request gets a binary answer, a JSON one a base64 JSON answer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import ClientDisconnect

from jewel_dagster.resources import wire
from jewel_dagster.resources.local_services import (
    InstantBackgroundRemover,
    InstantGenerator,
    InstantSegmenter,
    LocalBackgroundRemover,
    LocalImageManipulator,
    LocalMaskRefiner,
    LocalSegmenter,
    LocalStudioGenerator,
)
from jewel_dagster.vision import classical, imaging
from jewel_dagster.vision.classical import PixelPoint
from jewel_dagster.vision.imaging import CanvasStroke

ENDPOINTS = (
    "image-manipulator/resize",
    "image-manipulator/zoom-check",
    "birefnet/remove-background",
    "sam3/segment",
    "a100/refine-mask",
    "a100/generate",
    "gemini/generate-content",
)


def service_env(base_url: str) -> dict[str, str]:
    """The environment that points the four model services at a reference server at `base_url`."""
    return {
        "IMAGE_MANIPULATOR_URL": f"{base_url}/image-manipulator",
        "BIREFNET_URL": f"{base_url}/birefnet",
        "SAM3_URL": f"{base_url}/sam3",
        "A100_SERVER_URL": f"{base_url}/a100",
    }


TIMING_KEPT = 4096  # calls `GET /_stats/timing` remembers


class Knobs(BaseModel):
    latency: dict[str, float] = Field(default_factory=dict, description="Endpoint -> added seconds.")
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of calls answered 503.")
    hang: dict[str, int] = Field(default_factory=dict, description="Endpoint -> how many next calls hang.")
    hang_seconds: float = 3600.0
    reject: dict[str, int] = Field(default_factory=dict, description="Endpoint -> 4xx status to answer.")
    seed: int = 0


class ServerState:
    def __init__(self, knobs: Knobs, zoom_threshold: float = 0.25, instant: bool = False) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.wire: dict[str, Counter[str]] = {}
        # (path, received, answered) in wall-clock seconds, the last few thousand calls.
        self.timing: deque[tuple[str, float, float]] = deque(maxlen=TIMING_KEPT)
        self.set_knobs(knobs)
        self.manipulator = LocalImageManipulator(zoom_threshold=zoom_threshold)
        self.refiner = LocalMaskRefiner()
        # instant: trivial stand-ins, so that a load test on one machine measures the latency
        # knobs (the "GPU time") and the orchestration, not this server's classical vision.
        self.remover = InstantBackgroundRemover() if instant else LocalBackgroundRemover()
        self.segmenter = InstantSegmenter() if instant else LocalSegmenter()
        self.generator = InstantGenerator() if instant else LocalStudioGenerator(style="sweep")

    def set_knobs(self, knobs: Knobs) -> None:
        with self.lock:
            self.knobs = knobs
            self.hangs_left = dict(knobs.hang)
            self.rng = random.Random(knobs.seed)

    def count_wire(self, endpoint: str, content_type: str) -> None:
        """Count what a call came as (request and image-part content types): a test can see
        that binary mode never sent base64 JSON."""
        with self.lock:
            self.wire.setdefault(endpoint, Counter())[content_type] += 1

    async def gate(self, endpoint: str) -> None:
        """Apply the knobs to one call: count it, then reject, hang, fail or delay it."""
        with self.lock:
            self.calls[endpoint] += 1
            knobs = self.knobs
            hang = self.hangs_left.get(endpoint, 0) > 0
            if hang:
                self.hangs_left[endpoint] -= 1
            fail = knobs.failure_rate > 0 and self.rng.random() < knobs.failure_rate
        if endpoint in knobs.reject:
            raise HTTPException(knobs.reject[endpoint], detail=f"{endpoint} rejected the request (reject knob)")
        if hang:
            await asyncio.sleep(knobs.hang_seconds)
        if fail:
            raise HTTPException(503, detail=f"{endpoint} is overloaded (failure-rate knob)")
        delay = knobs.latency.get(endpoint, 0.0)
        if delay > 0:
            await asyncio.sleep(delay)


class NoFields(BaseModel):
    """An endpoint's non-image fields; unknown ones are ignored, so clients can add fields."""


class SegmentFields(NoFields):
    points: list[tuple[float, float]] = Field(min_length=1)
    labels: list[int]


class StrokeBody(BaseModel):
    points: list[tuple[float, float]] = Field(min_length=1)
    mode: str = Field(pattern="^(add|remove)$")
    size: float = Field(gt=0)


class RefineFields(NoFields):
    strokes: list[StrokeBody] = Field(default_factory=list)


class GenerateFields(NoFields):
    seed: int = 0
    prompt: str = ""


F = TypeVar("F", bound=BaseModel)


@dataclass(frozen=True)
class Call(Generic[F]):
    """One request, whichever wire mode it came in: its images decoded, its other fields."""

    images: dict[str, np.ndarray]
    fields: F
    binary: bool
    accept: str | None


async def read_call(
    request: Request, state: ServerState, endpoint: str, images: dict[str, Any], fields: type[F]
) -> Call[F]:
    """Parse a multipart (binary) or JSON (base64) request: `images` maps each image part's
    name to its decoder. Counts the request's content type, and each image part's, for tests."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    state.count_wire(endpoint, media or "none")
    raw: dict[str, bytes | str] = {}
    if media == wire.MULTIPART:
        form = await request.form(max_files=len(images) + 2, max_fields=4, max_part_size=64 * 1024)
        for name in images:
            part = form.get(name)
            if not isinstance(part, UploadFile):
                raise HTTPException(400, detail=f"{name}: an image file part is required")
            state.count_wire(endpoint, f"{name}: {part.content_type}")
            raw[name] = await part.read()
        text = form.get(wire.FIELDS_PART)
        if text is not None and not isinstance(text, str):
            raise HTTPException(400, detail=f"{wire.FIELDS_PART}: must be a JSON part, not a file")
        parsed = _validate(fields.model_validate_json, text or "{}")
    elif media == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, detail="the body is not JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(400, detail="the body must be a JSON object")
        for name in images:
            if not isinstance(body.get(name), str):
                raise HTTPException(422, detail=f"{name}: a base64 image string is required")
            raw[name] = body.pop(name)
        parsed = _validate(fields.model_validate, body)
    else:
        raise HTTPException(415, detail=f"send {wire.MULTIPART} (binary) or application/json (base64)")
    decoded = {name: await run_in_threadpool(_decode, images[name], data, name) for name, data in raw.items()}
    return Call(decoded, parsed, media == wire.MULTIPART, request.headers.get("accept"))


def _validate(validate: Callable[[Any], F], data: Any) -> F:
    try:
        return validate(data)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise HTTPException(422, detail=errors) from None


def _decode(decode: Any, data: bytes | str, field: str) -> Any:
    try:
        return decode(data)
    except ValueError as exc:
        raise HTTPException(400, detail=f"{field}: {exc}") from None


async def answer(call: Call[Any], image: np.ndarray, **fields: Any) -> Response | dict[str, Any]:
    """Answer in the request's mode: the image as the body (the encoding the client accepts)
    with the other fields in `X-Fields`, or JSON with the image in base64."""
    if call.binary:
        data, content_type = await run_in_threadpool(wire.encode_binary, image, wire.accepted_encoding(call.accept))
        headers = {wire.FIELDS_HEADER: wire.encode_fields(fields)} if fields else None
        return Response(data, media_type=content_type, headers=headers)
    name = "mask" if image.dtype == bool else "image"
    return {name: await run_in_threadpool(wire.encode_array, image), **fields}


IMAGE = {"image": wire.decode_image}


class CallTiming:
    """ASGI middleware: when each model call's headers came in and when its answer's last byte
    left, so a benchmark can lay the server's part of each call beside the pipeline's steps."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/_") or path.endswith("/health"):
            await self.app(scope, receive, send)
            return
        received = time.time()

        async def timed_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                with self.state.lock:
                    self.state.timing.append((path, received, time.time()))

        await self.app(scope, receive, timed_send)


# A call's images stay in memory: past this size Starlette rolls a file part to a temporary file
# and then writes it a 64 KB chunk at a time, each through the thread pool (a 16 MB BMP: 250 hops).
SPOOL_BYTES = 128 * 1024 * 1024


async def _caller_gone(request: Request, exc: Exception) -> Response:
    """A caller that went away before its body was read (a run worker killed mid-upload, a
    client's timeout) is not a server error: answered 400 for nobody rather than logged as
    "Exception in ASGI application" with a traceback (CI's soak printed one per chaos kill)."""
    return Response("the caller disconnected before its body was read", status_code=400)


def create_app(state: ServerState) -> FastAPI:
    MultiPartParser.spool_max_size = SPOOL_BYTES  # a public class setting; this process serves only this app
    app = FastAPI(title="jewel-dagster reference model server")
    app.add_middleware(CallTiming, state=state)
    app.add_exception_handler(ClientDisconnect, _caller_gone)
    manipulator = APIRouter(prefix="/image-manipulator")
    birefnet = APIRouter(prefix="/birefnet")
    sam3 = APIRouter(prefix="/sam3")
    a100 = APIRouter(prefix="/a100")

    for router in (manipulator, birefnet, sam3, a100):
        router.add_api_route("/health", lambda: {"status": "ok"}, methods=["GET"])

    @manipulator.post("/resize", response_model=None)
    async def resize(request: Request) -> Response | dict[str, Any]:
        await state.gate("image-manipulator/resize")
        call = await read_call(request, state, "image-manipulator/resize", IMAGE, NoFields)
        canvas, transform = await run_in_threadpool(state.manipulator.resize_to_canvas, call.images["image"])
        return await answer(call, canvas, transform=transform.to_dict())

    @manipulator.post("/zoom-check")
    async def zoom_check(request: Request) -> dict[str, Any]:
        await state.gate("image-manipulator/zoom-check")
        call = await read_call(request, state, "image-manipulator/zoom-check", IMAGE, NoFields)
        return (await run_in_threadpool(state.manipulator.check_zoom, call.images["image"])).to_dict()

    @birefnet.post("/remove-background", response_model=None)
    async def remove_background(request: Request) -> Response | dict[str, Any]:
        await state.gate("birefnet/remove-background")
        call = await read_call(request, state, "birefnet/remove-background", IMAGE, NoFields)
        return await answer(call, await run_in_threadpool(state.remover.remove_background, call.images["image"]))

    @sam3.post("/segment", response_model=None)
    async def segment(request: Request) -> Response | dict[str, Any]:
        await state.gate("sam3/segment")
        call = await read_call(request, state, "sam3/segment", IMAGE, SegmentFields)
        body = call.fields
        if len(body.labels) != len(body.points) or any(label not in (0, 1) for label in body.labels):
            raise HTTPException(400, detail="labels: one 0/1 label per point")
        points = [PixelPoint(x, y, label) for (x, y), label in zip(body.points, body.labels, strict=True)]
        try:
            mask = await run_in_threadpool(state.segmenter.segment, call.images["image"], points)
        except ValueError as exc:
            raise HTTPException(400, detail=str(exc)) from None
        return await answer(call, mask)

    @a100.post("/refine-mask", response_model=None)
    async def refine_mask(request: Request) -> Response | dict[str, Any]:
        await state.gate("a100/refine-mask")
        call = await read_call(request, state, "a100/refine-mask", {"mask": wire.decode_mask}, RefineFields)
        strokes = [CanvasStroke(tuple(s.points), s.mode, s.size) for s in call.fields.strokes]  # type: ignore[arg-type]
        return await answer(call, await run_in_threadpool(state.refiner.refine, call.images["mask"], strokes))

    @a100.post("/generate", response_model=None)
    async def generate(request: Request) -> Response | dict[str, Any]:
        await state.gate("a100/generate")
        decoders = {"image": wire.decode_image, "mask": wire.decode_mask}
        call = await read_call(request, state, "a100/generate", decoders, GenerateFields)
        image, mask = call.images["image"], call.images["mask"]
        if mask.shape != image.shape[:2]:
            raise HTTPException(400, detail="mask: must have the image's size")
        result = await run_in_threadpool(state.generator.generate, image, mask, call.fields.seed, call.fields.prompt)
        return await answer(call, result.image, model="reference-" + result.model)

    @app.post("/gemini/{version}/models/{model_call:path}")
    async def gemini_generate_content(version: str, model_call: str, body: dict[str, Any]) -> dict[str, Any]:
        """Gemini's generateContent, enough of it for google-genai: the image part in, an image out.

        Point the SDK here with GEMINI_BASE_URL=http://host:port/gemini and any GEMINI_API_KEY.
        """
        await state.gate("gemini/generate-content")
        try:
            parts = body["contents"][0]["parts"]
            inline = next(p["inlineData"] for p in parts if "inlineData" in p)
            data = inline["data"]  # the SDK sends URL-safe base64
        except (KeyError, IndexError, StopIteration, TypeError) as exc:
            raise HTTPException(400, detail=f"contents: expected a text part and an image part ({exc})") from None
        # In the thread pool, as every endpoint's image work: on the event loop it held up the
        # other services' answers (Flux's, on a loaded machine, by up to a second, issue 28).
        data = await run_in_threadpool(_gemini_image, data)
        part = {"inlineData": {"mimeType": "image/png", "data": data}}
        return {"candidates": [{"finishReason": "STOP", "content": {"role": "model", "parts": [part]}}]}

    for router in (manipulator, birefnet, sam3, a100):
        app.include_router(router)

    @app.get("/_knobs")
    def get_knobs() -> Knobs:
        return state.knobs

    @app.put("/_knobs")
    def put_knobs(knobs: Knobs) -> Knobs:
        state.set_knobs(knobs)
        return knobs

    @app.get("/_stats")
    def stats() -> dict[str, int]:
        with state.lock:
            return dict(state.calls)

    @app.get("/_stats/wire")
    def wire_stats() -> dict[str, dict[str, int]]:
        """Endpoint -> {content type: calls}: the request's ("multipart/form-data",
        "application/json") and each image part's ("image: image/bmp")."""
        with state.lock:
            return {endpoint: dict(counts) for endpoint, counts in state.wire.items()}

    @app.get("/_stats/timing")
    def timing_stats() -> list[dict[str, Any]]:
        """The calls of late, oldest first: path, and when (Unix seconds) each came in and was
        answered (its last byte sent)."""
        with state.lock:
            return [{"path": p, "received": r, "answered": a} for p, r, a in state.timing]

    @app.delete("/_stats")
    def reset_stats() -> dict[str, int]:
        with state.lock:
            state.calls.clear()
            state.wire.clear()
            state.timing.clear()
        return {}

    return app


def _gemini_image(data: Any) -> str:
    """The reference Gemini's picture, as base64 PNG, from the request's image part (URL-safe
    base64, as the SDK sends it). No mask travels to Gemini: the whole image is the "jewelry";
    the client pastes the real jewelry pixels back, so a radial backdrop blended in is enough
    to differ."""
    try:
        image = imaging.decode_image(base64.b64decode(data + "=" * (-len(data) % 4), altchars=b"-_"))
    except (ValueError, TypeError) as exc:
        raise HTTPException(400, detail=f"contents: expected a text part and an image part ({exc})") from None
    backdrop = classical.studio_background(image.shape[:2], seed=0, radial=True)
    out = ((image.astype(np.uint16) + backdrop) // 2).astype(np.uint8)
    return base64.b64encode(imaging.encode_png(out)).decode("ascii")


def _pairs(values: list[str], cast: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, _, value = item.partition("=")
        if key not in ENDPOINTS:
            raise SystemExit(f"unknown endpoint {key!r}; one of {', '.join(ENDPOINTS)}")
        out[key] = cast(value)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--latency", action="append", default=[], help="ENDPOINT=SECONDS, repeatable")
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--hang", action="append", default=[], help="ENDPOINT=N: the next N calls hang")
    parser.add_argument("--reject", action="append", default=[], help="ENDPOINT=STATUS: answer this 4xx")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zoom-threshold", type=float, default=0.25)
    parser.add_argument("--instant", action="store_true", help="trivial stand-ins instead of classical vision")
    args = parser.parse_args(argv)
    knobs = Knobs(
        latency=_pairs(args.latency, float),
        failure_rate=args.failure_rate,
        hang=_pairs(args.hang, int),
        reject=_pairs(args.reject, int),
        seed=args.seed,
    )
    app = create_app(ServerState(knobs, zoom_threshold=args.zoom_threshold, instant=args.instant))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
