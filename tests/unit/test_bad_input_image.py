"""Uploads that are not base64, not an image, not an accepted format, or too large."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.gateway_client import (
    gateway_client,
    gateway_with_fake_dagster,
    png_base64,
    start_body,
    stored_blobs,
)


def _post(tmp_path: Path, image: str, **settings: int) -> tuple[int, str]:
    with gateway_client(tmp_path, **settings) as client:
        response = client.post("/workflow/start", json=start_body(originalImageBase64=image))
    return response.status_code, response.json()["detail"]


def test_base64_that_does_not_decode(tmp_path: Path) -> None:
    code, detail = _post(tmp_path, "this is *not* base64!")
    assert code == 400 and "originalImageBase64" in detail and "base64" in detail


def test_bytes_that_are_not_an_image(tmp_path: Path) -> None:
    code, detail = _post(tmp_path, base64.b64encode(b"%PDF-1.4 definitely a document").decode())
    assert code == 400 and "not an image" in detail


def test_a_format_we_do_not_accept(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PPM")
    code, detail = _post(tmp_path, base64.b64encode(buf.getvalue()).decode())
    assert code == 415 and "PPM" in detail


def test_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    # 20000 x 20000 pixels of one colour: a few hundred KB as PNG, 1.2 GB once decoded.
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    code, detail = _post(tmp_path, base64.b64encode(buf.getvalue()).decode())
    assert code == 413 and "pixels" in detail


def test_image_over_the_pixel_limit(tmp_path: Path) -> None:
    code, detail = _post(tmp_path, png_base64((300, 300)), max_image_pixels=50_000)
    assert code == 413 and "pixels" in detail


def test_a_valid_image_gets_past_validation(tmp_path: Path) -> None:
    code, detail = _post(tmp_path, png_base64())
    assert code == 503 and "Dagster" in detail  # the only thing missing is Dagster itself


def _ppm_base64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PPM")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    ("image", "settings", "code"),
    [
        ("this is *not* base64!", {}, 400),
        (base64.b64encode(b"%PDF-1.4 definitely a document").decode(), {}, 400),
        (_ppm_base64(), {}, 415),
        (png_base64((300, 300)), {"max_image_pixels": 50_000}, 413),
    ],
    ids=["not-base64", "not-an-image", "ppm", "too-many-pixels"],
)
def test_a_refused_image_stores_and_launches_nothing(tmp_path: Path, image: str, settings: Any, code: int) -> None:
    # Dagster answers here, so only the input check stands between the request and a stored upload.
    with gateway_with_fake_dagster(tmp_path, **settings) as (client, dagster):
        response = client.post("/workflow/start", json=start_body(originalImageBase64=image))
    assert response.status_code == code, response.text
    assert stored_blobs(tmp_path) == []
    assert dagster.partitions_added == [] and dagster.launches == []


def test_an_accepted_image_is_stored_and_launched(tmp_path: Path) -> None:
    # The control for the test above: with the same fake, a good request does store and launch.
    with gateway_with_fake_dagster(tmp_path) as (client, dagster):
        response = client.post("/workflow/start", json=start_body())
    assert response.status_code == 200, response.text
    workflow = response.json()["workflowId"]
    assert stored_blobs(tmp_path) == [f"jewelry-uploads/requests/{workflow}/upload"]
    assert dagster.partitions_added == [workflow] and dagster.launches == [("jewelry_generation", workflow)]
