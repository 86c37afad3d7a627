"""How images cross HTTP between the pipeline and the model services: base64 PNG in JSON.

PNG because it is lossless: the HTTP path must give the same pixels as the in-process one.
Shared by the HTTP clients and the reference model server, so both speak one format.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from jewel_dagster.vision import imaging


def encode_array(array: np.ndarray) -> str:
    """RGB image or bool mask -> base64 PNG text."""
    return base64.b64encode(imaging.encode_png(array)).decode("ascii")


def decode_image(text: str) -> np.ndarray:
    """Base64 PNG/JPEG -> RGB image; ValueError when it is not one."""
    array = imaging.decode_png(_bytes(text))
    if array.ndim != 3:
        raise ValueError("expected an RGB image, got a one-channel one")
    return array


def decode_mask(text: str) -> np.ndarray:
    """Base64 PNG -> bool mask (one channel; white = jewelry)."""
    return imaging.decode_mask(_bytes(text))


def _bytes(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError(f"not base64: {exc}") from exc
