"""The upload checks that run before anything is stored or launched."""

from __future__ import annotations

import base64
import io

import pytest
from fastapi import HTTPException
from PIL import Image

from gateway.uploads import decode_base64_image


def _b64(fmt: str, size: tuple[int, int] = (20, 10)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


def test_accepts_plain_and_data_url_base64() -> None:
    raw = decode_base64_image(_b64("JPEG"), 10**7, 10**7)
    assert raw.startswith(b"\xff\xd8")
    assert decode_base64_image("data:image/png;base64," + _b64("PNG"), 10**7, 10**7).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("text", "limits", "code", "words"),
    [
        ("@@@not-base64@@@", (10**7, 10**7), 400, "not valid base64"),
        (base64.b64encode(b"hello, not an image").decode(), (10**7, 10**7), 400, "not an image"),
        (_b64("PNG", (200, 200)), (10**7, 1000), 413, "pixels"),
        (_b64("PNG", (200, 200)), (10, 10**7), 413, "larger than"),
        (_b64("PPM"), (10**7, 10**7), 415, "not accepted"),
    ],
)
def test_rejects_with_a_readable_4xx(text: str, limits: tuple[int, int], code: int, words: str) -> None:
    with pytest.raises(HTTPException) as info:
        decode_base64_image(text, *limits)
    assert info.value.status_code == code
    assert "originalImageBase64" in info.value.detail and words in info.value.detail
