"""How images cross HTTP between the pipeline and the model services (docs/service-contracts.md).

Shared by the HTTP clients and the reference model server, so both speak one format. Two modes:

- **binary** (default): a request is `multipart/form-data`, one file part per image and the other
  fields as one JSON part named `fields`; an answer's body is the image itself, its other fields
  one JSON object in the `X-Fields` header. No base64 (+33 % bytes, a copy each way) and no
  multi-megabyte JSON string to build and parse.
- **json**: base64 images inside JSON, for services that speak nothing else.

Every encoding is lossless: the HTTP path must give the same pixels as the in-process one.
An RGB image travels as an uncompressed BMP (`image/bmp`, the default) or a PNG (`image/png`):
on a 5.3-megapixel photo PNG costs about 20x BMP's encode time for half its bytes, a bad trade
on a data-centre network (`benchmarks.wire`). A mask travels as a 1-bit PNG in binary mode (a
few KB: masks compress well) and as today's 8-bit PNG in JSON mode. Every receiver decodes by
content, so a service may answer PNG or JPEG to a client that asked for BMP.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import weakref
from collections import OrderedDict
from typing import Any, Literal

import cv2
import numpy as np

from jewel_dagster.vision import imaging

WireMode = Literal["binary", "json"]
ImageEncoding = Literal["bmp", "png"]

CONTENT_TYPES: dict[ImageEncoding, str] = {"bmp": "image/bmp", "png": "image/png"}
MULTIPART = "multipart/form-data"
FIELDS_PART = "fields"
FIELDS_HEADER = "X-Fields"
BODY = "@body"  # where a client keeps a binary answer's image among the answer's fields
BODY_TYPE = "@body-type"  # and that image's content type


# --------------------------------------------------------------------------- binary mode


def encode_binary(array: np.ndarray, encoding: ImageEncoding = "bmp") -> tuple[bytes, str]:
    """RGB image or bool mask -> (bytes, content type): masks as 1-bit PNG, images as `encoding`."""
    if array.dtype == bool:
        return imaging.encode_stored_png(array), "image/png"
    if encoding == "bmp":
        ok, buf = cv2.imencode(".bmp", cv2.cvtColor(array, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - cv2 only fails on unsupported dtypes
            raise ValueError("BMP encoding failed")
        return buf.tobytes(), CONTENT_TYPES["bmp"]
    return imaging.encode_png(array), CONTENT_TYPES["png"]


def accepted_encoding(accept: str | None) -> ImageEncoding:
    """The image encoding a binary answer uses for a request's `Accept` header: BMP only when
    asked for (a client that says nothing gets PNG, which every image library reads)."""
    return "bmp" if accept and "image/bmp" in accept else "png"


def encode_fields(fields: dict[str, Any]) -> str:
    """The non-image fields of a binary request part or answer header: compact JSON (ASCII)."""
    return json.dumps(fields, separators=(",", ":"))


def decode_fields(text: str | None) -> dict[str, Any]:
    """Inverse of :func:`encode_fields`; missing = no fields; ValueError when not a JSON object."""
    if not text:
        return {}
    fields = json.loads(text)
    if not isinstance(fields, dict):
        raise ValueError("the fields are not a JSON object")
    return fields


def plain_rgb(data: bytes, content_type: str) -> bool:
    """Whether `data` is an image of 8-bit RGB pixels and nothing else: a BMP with the plain
    40-byte header (no colour profile) at 24 bits a pixel, or a PNG of colour type 2 at depth 8."""
    if content_type == "image/bmp":
        return (
            len(data) >= 30
            and data[:2] == b"BM"
            and int.from_bytes(data[14:18], "little") == 40
            and int.from_bytes(data[28:30], "little") == 24
        )
    if content_type == "image/png":
        return (
            len(data) >= 26
            and data[:8] == b"\x89PNG\r\n\x1a\n"
            and data[12:16] == b"IHDR"
            and data[24:26] == b"\x08\x02"
        )
    return False


class AnsweredImages:
    """RGB images decoded from binary answers, with the bytes they came as, so that a later
    request sending the same array sends those bytes instead of encoding it again.

    On the critical path an answer's image is often the next call's image: the resize's canvas
    goes to the zoom check, the Flux image to SAM3 (the fidelity metrics). Each re-encode is a
    16 MB BMP (~17 ms quiet, several times that beside the step's other threads, issue 28).
    An entry is found by the array's identity only, and the array is made read-only when it is
    remembered, so what is sent is always the pixels the array holds: code that changes it in
    place raises instead of sending stale bytes. Entries go with their array, and at most
    `max_entries` are kept (the oldest dropped), so a process holds a few answers' bytes at most.
    """

    def __init__(self, max_entries: int = 2) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[int, tuple[weakref.ref[np.ndarray], bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, array: np.ndarray, data: bytes, content_type: str) -> None:
        """`array` was decoded from `data` (of `content_type`): kept for :meth:`bytes_of`. Only
        bytes that hold exactly those pixels are kept: an answer with alpha or a palette was
        decoded as RGB, and the next service must not receive what we did not see."""
        if array.dtype != np.uint8 or array.ndim != 3 or not array.flags.owndata:
            return  # a view's pixels can change through its base: not remembered
        if not plain_rgb(data, content_type):
            return
        array.flags.writeable = False
        key, ref = id(array), weakref.ref(array)
        with self._lock:
            self._entries[key] = (ref, data, content_type)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        weakref.finalize(array, self._forget, key, ref)

    def bytes_of(self, array: np.ndarray, content_type: str) -> bytes | None:
        """The bytes `array` came as, when it was remembered as `content_type`; else None."""
        with self._lock:
            entry = self._entries.get(id(array))
        if entry is None or entry[0]() is not array or entry[2] != content_type or array.flags.writeable:
            return None
        return entry[1]

    def _forget(self, key: int, ref: weakref.ref[np.ndarray]) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is ref:
                del self._entries[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


# --------------------------------------------------------------------------- json mode


def encode_array(array: np.ndarray) -> str:
    """RGB image or bool mask -> base64 PNG text (JSON mode)."""
    return base64.b64encode(imaging.encode_png(array)).decode("ascii")


# --------------------------------------------------------------------------- both modes


def decode_image(data: str | bytes) -> np.ndarray:
    """An RGB image from base64 text (JSON mode) or raw bytes (binary mode), PNG, BMP or JPEG;
    ValueError when it is not one."""
    array = imaging.decode_png(_bytes(data))
    if array.ndim != 3:
        raise ValueError("expected an RGB image, got a one-channel one")
    return array


def decode_mask(data: str | bytes) -> np.ndarray:
    """A bool mask (white = jewelry) from base64 text or raw bytes of any image (1-bit or 8-bit)."""
    return imaging.decode_mask(_bytes(data))


def _bytes(data: str | bytes) -> bytes:
    if isinstance(data, bytes):
        return data
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError(f"not base64: {exc}") from exc
