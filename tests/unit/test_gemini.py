"""The Gemini client through the real google-genai SDK, pointed at a loopback fake."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, Request
from PIL import Image

from jewel_dagster.resources.gemini import GeminiGenerator
from tests.support.servers import app_in_thread

BACKDROP = (10, 120, 200)


def _fake_gemini() -> tuple[FastAPI, dict[str, Any]]:
    app = FastAPI()
    seen: dict[str, Any] = {"refuse": False, "calls": []}

    @app.post("/{version}/models/{model_call:path}")
    async def generate_content(version: str, model_call: str, request: Request) -> dict[str, Any]:
        body = await request.json()
        seen["calls"].append(
            {"path": f"/{version}/models/{model_call}", "key": request.headers.get("x-goog-api-key"), "body": body}
        )
        if seen["refuse"]:
            return {"candidates": [{"finishReason": "SAFETY", "content": {"role": "model", "parts": []}}]}
        buf = io.BytesIO()
        Image.new("RGB", (500, 667), BACKDROP).save(buf, "PNG")  # another size: the client scales it
        part = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(buf.getvalue()).decode()}}
        return {"candidates": [{"finishReason": "STOP", "content": {"role": "model", "parts": [part]}}]}

    return app, seen


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, dict[str, Any]]]:
    app, seen = _fake_gemini()
    with app_in_thread(app) as url:
        yield url, seen


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).integers(0, 256, (200, 150, 3), dtype=np.uint8)
    mask = np.zeros((200, 150), bool)
    mask[50:120, 40:90] = True
    return image, mask


def test_success_keeps_the_jewelry_pixels(fake: tuple[str, dict[str, Any]]) -> None:
    url, seen = fake
    seen["refuse"] = False
    image, mask = _inputs()
    generator = GeminiGenerator(api_key="test-key", model="gemini-test", base_url=url, attempts=1)
    result = generator.generate(image, mask, seed=3, prompt="studio")
    assert result.image is not None and result.reason is None
    assert result.image.shape == image.shape
    assert np.array_equal(result.image[mask], image[mask])
    assert np.all(np.abs(result.image[~mask].astype(int) - BACKDROP) <= 2)
    call = seen["calls"][-1]
    assert call["path"].endswith("models/gemini-test:generateContent") and call["key"] == "test-key"
    parts = call["body"]["contents"][0]["parts"]
    assert parts[0]["text"] == "studio"
    inline = parts[1]["inlineData"]  # the SDK's wire format mixes camelCase and snake_case here
    assert inline.get("mimeType", inline.get("mime_type")) == "image/png" and inline["data"]


def test_refusal_gives_null_with_the_reason(fake: tuple[str, dict[str, Any]]) -> None:
    url, seen = fake
    seen["refuse"] = True
    image, mask = _inputs()
    result = GeminiGenerator(api_key="test-key", base_url=url, attempts=1).generate(image, mask, 0, "studio")
    assert result.image is None and "SAFETY" in (result.reason or "")


def test_unreachable_gemini_gives_null_not_an_exception() -> None:
    image, mask = _inputs()
    generator = GeminiGenerator(api_key="k", base_url="http://127.0.0.1:9", attempts=1, timeout_seconds=2)
    result = generator.generate(image, mask, 0, "studio")
    assert result.image is None and "unavailable" in (result.reason or "")


def test_the_reference_server_speaks_gemini_for_the_sdk() -> None:
    from tests.support.servers import reference_server

    image, mask = _inputs()
    with reference_server() as url:
        generator = GeminiGenerator(api_key="any", base_url=f"{url}/gemini", attempts=1)
        result = generator.generate(image, mask, seed=0, prompt="studio")
    assert result.image is not None and result.image.shape == image.shape
    assert np.array_equal(result.image[mask], image[mask])
    assert not np.array_equal(result.image[~mask], image[~mask])
