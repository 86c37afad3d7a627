"""Turns the frontend's base64 upload into checked image bytes, or a 4xx a person can read."""

from __future__ import annotations

import base64
import binascii
import io
import re

from fastapi import HTTPException, status
from PIL import Image, UnidentifiedImageError

ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"}
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


def decode_base64_image(text: str, max_bytes: int, max_pixels: int) -> bytes:
    """Check size, base64, format and pixel count from the header; full decoding is the pipeline's."""
    payload = _DATA_URL.sub("", text.strip(), count=1)
    if len(payload) * 3 // 4 > max_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"originalImageBase64: the image is larger than {max_bytes // (1024 * 1024)} MB",
        )
    try:
        data = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="originalImageBase64: not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, width, height = img.format, img.width, img.height
    except Image.DecompressionBombError:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"originalImageBase64: the image has more than {max_pixels} pixels (a decompression bomb?)",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, detail="originalImageBase64: the data is not an image we can read"
        ) from None
    if fmt not in ACCEPTED_FORMATS:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail=f"originalImageBase64: {fmt} images are not accepted; send JPEG, PNG or WebP",
        )
    if width * height > max_pixels:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"originalImageBase64: {width}x{height} is more than {max_pixels} pixels",
        )
    return data
