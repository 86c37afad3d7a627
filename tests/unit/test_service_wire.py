"""The two wire modes of docs/service-contracts.md: every HTTP client against the reference model
server in binary (BMP and PNG images) and JSON mode, what each mode puts on the wire, and
malformed or refused calls on both sides."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import dagster as dg
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from devtools.reference_server import Knobs, ServerState, create_app
from jewel_dagster.resources import wire
from jewel_dagster.resources.http_services import (
    HttpBackend,
    HttpBackgroundRemover,
    HttpFluxGenerator,
    HttpImageManipulator,
    HttpMaskRefiner,
    HttpSegmenter,
    TransientServiceError,
)
from jewel_dagster.resources.local_services import (
    InstantBackgroundRemover,
    InstantGenerator,
    InstantSegmenter,
    LocalImageManipulator,
    LocalMaskRefiner,
)
from jewel_dagster.resources.selection import build_resources
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.vision import imaging
from jewel_dagster.vision.classical import PixelPoint
from jewel_dagster.vision.imaging import CanvasStroke
from tests.support.photos import coffee_jpeg
from tests.support.servers import reference_server, set_knobs

MODES = [("binary", "bmp"), ("binary", "png"), ("json", "bmp")]
IMAGE_ENDPOINTS = (
    "image-manipulator/resize",
    "image-manipulator/zoom-check",
    "birefnet/remove-background",
    "sam3/segment",
    "a100/refine-mask",
    "a100/generate",
)
STROKES = [CanvasStroke(((100.0, 100.0), (400.0, 300.0)), "add", 40.0)]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The reference server with its instant stand-ins: the wire is under test, not the vision."""
    with reference_server("--instant") as url:
        yield url


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return imaging.decode_image(coffee_jpeg())


def _clients(url: str, mode: str, encoding: str) -> dict[str, Any]:
    config: dict[str, Any] = {"wire_mode": mode, "image_encoding": encoding, "timeout_seconds": 60.0}
    return {
        "manipulator": HttpImageManipulator(base_url=f"{url}/image-manipulator", **config),
        "remover": HttpBackgroundRemover(base_url=f"{url}/birefnet", **config),
        "segmenter": HttpSegmenter(base_url=f"{url}/sam3", **config),
        "refiner": HttpMaskRefiner(base_url=f"{url}/a100", **config),
        "flux": HttpFluxGenerator(base_url=f"{url}/a100", **config),
    }


@pytest.mark.parametrize(("mode", "encoding"), MODES)
def test_every_client_gives_the_local_pixels_and_sends_what_its_mode_says(
    server: str, photo: np.ndarray, mode: str, encoding: str
) -> None:
    set_knobs(server)
    http = _clients(server, mode, encoding)
    canvas, transform = http["manipulator"].resize_to_canvas(photo)
    local_canvas, local_transform = LocalImageManipulator().resize_to_canvas(photo)
    assert np.array_equal(canvas, local_canvas) and transform == local_transform
    assert http["manipulator"].check_zoom(canvas) == LocalImageManipulator().check_zoom(canvas)
    removed = http["remover"].remove_background(canvas)
    assert np.array_equal(removed, InstantBackgroundRemover().remove_background(canvas))
    points = [PixelPoint(900.0, 1200.0, 1), PixelPoint(10.0, 10.0, 0)]
    mask = http["segmenter"].segment(canvas, points)
    assert mask.dtype == bool and np.array_equal(mask, InstantSegmenter().segment(canvas, points))
    refined = http["refiner"].refine(mask, STROKES)
    assert np.array_equal(refined, LocalMaskRefiner().refine(mask, STROKES))
    generation = http["flux"].generate(canvas, refined, 3, "studio")
    assert np.array_equal(generation.image, InstantGenerator().generate(canvas, refined, 3, "studio").image)
    assert generation.model == "reference-instant"  # a field that rides beside the image

    received = httpx.get(f"{server}/_stats/wire").json()
    assert set(received) == set(IMAGE_ENDPOINTS)
    for endpoint, counts in received.items():
        if mode == "json":
            assert counts == {"application/json": 1}, endpoint
            continue
        # Binary mode never sends JSON: multipart with image parts, masks as PNG, images as asked.
        assert counts.get("multipart/form-data") == 1 and "application/json" not in counts, (endpoint, counts)
        parts = {kind: n for kind, n in counts.items() if kind != "multipart/form-data"}
        expected = {"a100/refine-mask": {"mask: image/png": 1}}.get(endpoint, {f"image: image/{encoding}": 1})
        if endpoint == "a100/generate":
            expected = {f"image: image/{encoding}": 1, "mask: image/png": 1}
        assert parts == expected, endpoint


def _encoded_shapes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The shape of each array the clients encode from now on, in order."""
    encoded: list[tuple[int, ...]] = []
    encode = wire.encode_binary

    def counted(array: np.ndarray, encoding: wire.ImageEncoding = "bmp") -> tuple[bytes, str]:
        encoded.append(array.shape)
        return encode(array, encoding)

    monkeypatch.setattr(wire, "encode_binary", counted)
    return encoded


def test_an_answered_image_is_sent_on_as_the_bytes_it_came_as(
    server: str, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resize's canvas goes on to the zoom check, SAM3 and Flux, the Flux image to SAM3 (the
    metrics): each is sent as the BMP it was answered as, not encoded again (issue 28), and the
    services still see the pixels the array holds."""
    set_knobs(server)
    http = _clients(server, "binary", "bmp")
    canvas, _ = http["manipulator"].resize_to_canvas(photo)
    encoded = _encoded_shapes(monkeypatch)
    assert http["manipulator"].check_zoom(canvas) == LocalImageManipulator().check_zoom(canvas)
    points = [PixelPoint(900.0, 1200.0, 1)]
    mask = http["segmenter"].segment(canvas, points)
    assert np.array_equal(mask, InstantSegmenter().segment(canvas, points))
    generation = http["flux"].generate(canvas, mask, 3, "studio")
    assert generation.image is not None
    assert np.array_equal(generation.image, InstantGenerator().generate(canvas, mask, 3, "studio").image)
    found = http["segmenter"].segment(generation.image, points)
    assert np.array_equal(found, InstantSegmenter().segment(generation.image, points))
    assert encoded == [mask.shape]  # only the mask: no image was encoded again
    # The arrays cannot change under their bytes; a copy (which may) is encoded.
    assert not canvas.flags.writeable and not generation.image.flags.writeable
    changed = canvas.copy()
    changed[0, 0] = 255 - changed[0, 0]
    assert http["manipulator"].check_zoom(changed) == LocalImageManipulator().check_zoom(changed)
    assert encoded == [mask.shape, changed.shape]


def test_flux_encodes_its_request_when_prepared_and_calls_when_asked(
    server: str, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_knobs(server)
    httpx.delete(f"{server}/_stats")
    canvas = LocalImageManipulator().resize_to_canvas(photo)[0]
    mask = InstantSegmenter().segment(canvas, [PixelPoint(900.0, 1200.0, 1)])
    encoded = _encoded_shapes(monkeypatch)
    call = _clients(server, "binary", "bmp")["flux"].prepare(canvas, mask, 3, "studio")
    assert encoded == [canvas.shape, mask.shape] and httpx.get(f"{server}/_stats").json() == {}
    generation = call()
    assert httpx.get(f"{server}/_stats").json() == {"a100/generate": 1} and len(encoded) == 2
    assert np.array_equal(generation.image, InstantGenerator().generate(canvas, mask, 3, "studio").image)


def test_answered_images_are_found_by_identity_and_go_with_their_array() -> None:
    answered = wire.AnsweredImages(max_entries=2)
    arrays = [np.full((4, 6, 3), i, np.uint8) for i in range(3)]
    sent = [wire.encode_binary(array, "bmp")[0] for array in arrays]
    for data, array in zip(sent, arrays, strict=True):
        answered.remember(array, data, "image/bmp")
    del array
    assert answered.bytes_of(arrays[0], "image/bmp") is None  # the oldest, dropped for the third
    assert answered.bytes_of(arrays[2], "image/bmp") == sent[2]
    assert answered.bytes_of(arrays[2], "image/png") is None  # came as BMP: not what PNG would send
    assert answered.bytes_of(arrays[2].copy(), "image/bmp") is None  # equal pixels, another array
    with pytest.raises(ValueError, match="read-only"):
        arrays[2][0, 0] = 1
    del arrays[1:]
    assert len(answered) == 0  # the bytes go with their arrays
    view = np.zeros((4, 6, 3), np.uint8)[1:]
    answered.remember(view, wire.encode_binary(view, "bmp")[0], "image/bmp")
    assert answered.bytes_of(view, "image/bmp") is None and view.flags.writeable


@pytest.mark.parametrize(
    ("channels", "extension", "content_type", "kept"),
    [(3, ".bmp", "image/bmp", True), (3, ".png", "image/png", True), (4, ".bmp", "image/bmp", False),
     (4, ".png", "image/png", False), (1, ".png", "image/png", False)],
)  # fmt: skip
def test_only_answers_of_plain_rgb_pixels_are_sent_on_as_they_came(
    channels: int, extension: str, content_type: str, kept: bool
) -> None:
    """An answer with alpha (or grey) is decoded as RGB: sending its bytes on would show the next
    service pixels we did not see, so it is encoded again from the array (review of issue 28)."""
    pixels = np.random.default_rng(3).integers(0, 256, (5, 7, channels), np.uint8)
    ok, encoded = cv2.imencode(extension, pixels if channels > 1 else pixels[..., 0])
    assert ok
    answered = wire.AnsweredImages()
    array = np.ascontiguousarray(np.zeros((5, 7, 3), np.uint8))  # what our decoder would give
    answered.remember(array, encoded.tobytes(), content_type)
    assert (answered.bytes_of(array, content_type) is not None) is kept


# --------------------------------------------------------------------------- the server's side


@pytest.fixture(scope="module")
def app_client() -> Iterator[TestClient]:
    with TestClient(create_app(ServerState(Knobs(), instant=True))) as client:
        yield client


def test_a_binary_request_gets_a_binary_answer_in_the_encoding_it_accepts(
    app_client: TestClient, photo: np.ndarray
) -> None:
    data, content_type = wire.encode_binary(photo, "png")
    for accept, answered in (("image/bmp", "image/bmp"), ("image/png", "image/png"), (None, "image/png")):
        headers = {"Accept": accept} if accept else {}
        response = app_client.post(
            "/image-manipulator/resize", files={"image": ("image.png", data, content_type)}, headers=headers
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == answered
        transform = wire.decode_fields(response.headers[wire.FIELDS_HEADER])["transform"]
        canvas = wire.decode_image(response.content)
        assert canvas.shape == (transform["canvas_height"], transform["canvas_width"], 3)
    # The mask answer of a binary call is a 1-bit PNG.
    canvas_bmp, _ = wire.encode_binary(canvas, "bmp")
    fields = wire.encode_fields({"points": [[900, 1200]], "labels": [1]})
    response = app_client.post(
        "/sam3/segment",
        files={"image": ("image.bmp", canvas_bmp, "image/bmp"), "fields": (None, fields, "application/json")},
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n" and response.content[24] == 1  # bit depth 1


def test_a_caller_gone_mid_body_is_answered_not_raised(photo: np.ndarray) -> None:
    """A run worker killed while it uploads an image (the soak's chaos) leaves the server a
    half-read multipart body: that is a 400 for nobody, not an exception out of the app (which
    uvicorn logs as "Exception in ASGI application" with a traceback)."""
    data, content_type = wire.encode_binary(photo, "png")
    request = httpx.Request(
        "POST", "http://server/birefnet/remove-background", files={"image": ("i.png", data, content_type)}
    )
    body = request.read()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/birefnet/remove-background", "raw_path": b"/birefnet/remove-background", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 40000), "server": ("server", 80),
        "headers": [(name.encode(), value.encode()) for name, value in request.headers.items()],
    }  # fmt: skip
    first = [{"type": "http.request", "body": body[: len(body) // 2], "more_body": True}]

    async def receive() -> dict[str, Any]:
        return first.pop() if first else {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(create_app(ServerState(Knobs(), instant=True))(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400, sent


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"content": b"image", "headers": {"Content-Type": "text/plain"}}, 415, "multipart/form-data"),
        ({"files": {"other": ("x.png", b"x", "image/png")}}, 400, "image: an image file part is required"),
        ({"files": {"image": ("x.png", b"not a png", "image/png")}}, 400, "image: "),
        ({"json": {"image": 3}}, 422, "image: a base64 image string is required"),
        ({"json": {"image": "%%%"}}, 400, "not base64"),
        ({"json": [1]}, 400, "JSON object"),
    ],
)
def test_a_malformed_request_is_a_clear_4xx(
    app_client: TestClient, kwargs: dict[str, Any], status: int, message: str
) -> None:
    response = app_client.post("/birefnet/remove-background", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_bad_fields_are_a_422_in_both_modes(app_client: TestClient, photo: np.ndarray) -> None:
    data, content_type = wire.encode_binary(photo, "bmp")
    bad = {"points": [], "labels": []}
    binary = app_client.post(
        "/sam3/segment",
        files={"image": ("i.bmp", data, content_type), "fields": (None, wire.encode_fields(bad), "application/json")},
    )
    as_json = app_client.post("/sam3/segment", json={"image": wire.encode_array(photo), **bad})
    for response in (binary, as_json):
        assert response.status_code == 422 and "points" in response.json()["detail"], response.text
    not_json = app_client.post(
        "/sam3/segment", files={"image": ("i.bmp", data, content_type), "fields": (None, "{", "application/json")}
    )
    assert not_json.status_code == 422 and "json" in not_json.json()["detail"].lower(), not_json.text


# --------------------------------------------------------------------------- the client's side


def _fake(client: HttpBackend, handler: Callable[[httpx.Request], httpx.Response]) -> HttpBackend:
    """Route the client's calls to `handler` (httpx's MockTransport): a service answering badly."""
    client._http = httpx.Client(base_url=client.base_url, transport=httpx.MockTransport(handler))
    return client


def test_a_malformed_binary_answer_is_a_permanent_failure(photo: np.ndarray) -> None:
    png, _ = wire.encode_binary(photo, "png")
    answers = {
        "not an image": httpx.Response(200, content=b"garbage", headers={"content-type": "image/png"}),
        "fields not JSON": httpx.Response(200, content=png, headers={"content-type": "image/png", "X-Fields": "{"}),
        "no transform": httpx.Response(200, content=png, headers={"content-type": "image/png"}),
        "no image": httpx.Response(200, json={"transform": {}}),
    }
    messages = {}
    for name, answer in answers.items():
        client = _fake(HttpImageManipulator(base_url="http://svc"), lambda request, a=answer: a)
        with pytest.raises(dg.Failure) as failure:
            client.resize_to_canvas(photo)
        assert failure.value.allow_retries is False, name
        messages[name] = failure.value.description
    assert "undecodable 'image'" in messages["not an image"]
    assert "undecodable response" in messages["fields not JSON"]
    assert "undecodable 'transform'" in messages["no transform"]
    assert "undecodable 'image'" in messages["no image"]


def test_a_binary_call_that_fails_stays_transient_or_permanent(photo: np.ndarray) -> None:
    seen: list[httpx.Request] = []

    def overloaded(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503, json={"detail": "busy"})

    with pytest.raises(TransientServiceError, match="503: busy"):  # one try: the retries are test_service_retries'
        _fake(HttpBackgroundRemover(base_url="http://svc", call_attempts=1), overloaded).remove_background(photo)
    assert seen[0].headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="image"; filename="image.bmp"' in seen[0].content
    assert b"Content-Type: image/bmp" in seen[0].content

    def refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(415, json={"detail": "JSON only"})

    with pytest.raises(dg.Failure, match="415: JSON only"):
        _fake(HttpBackgroundRemover(base_url="http://svc"), refused).remove_background(photo)


def test_the_settings_pick_every_http_clients_wire(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    urls = {name: f"http://127.0.0.1:1/{name}" for name in ("image_manipulator_url", "birefnet_url", "sam3_url")}
    urls["a100_server_url"] = "http://127.0.0.1:1/a100"
    http = ("image_manipulator", "background_remover", "segmenter", "mask_refiner", "flux_generator")
    default = build_resources(PipelineSettings(local_blob_root=str(tmp_path), **urls))
    assert {(default[name].wire_mode, default[name].image_encoding) for name in http} == {("binary", "bmp")}
    monkeypatch.setenv("SERVICE_WIRE", "json")
    monkeypatch.setenv("SERVICE_IMAGE_ENCODING", "png")
    chosen = build_resources(PipelineSettings(local_blob_root=str(tmp_path), **urls))
    assert {(chosen[name].wire_mode, chosen[name].image_encoding) for name in http} == {("json", "png")}
