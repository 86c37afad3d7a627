"""The arrays one process stored lately, by blob path, so that the next step of the same run
reads them back without decoding the PNG it has just encoded.

Only arrays that a PNG round trip returns unchanged are kept (an RGB uint8 image, a bool mask):
a hit gives exactly what decoding the blob would. Arrays are copied in and out, so a step that
changes its input in place cannot change what a later step loads; an array that cannot change
(read-only and owning its memory: an image decoded from a model service's answer,
`wire.AnsweredImages`) is kept and handed out as itself, so a later step sends the canvas to
SAM3 and Flux as the bytes it was answered as, without a copy or an encode. Paths are per run
(`requests/<id>/<run id>/<asset>.png`) and blobs are never rewritten, so an entry never goes
stale; the blob itself is still written before the step succeeds, and any other process (a
re-execution, a step of the multiprocess executor) reads the blob.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


def round_trips(array: np.ndarray) -> bool:
    """True when `imaging.decode_png(imaging.encode_png(array))` equals `array` (dtype included)."""
    if array.dtype == bool:
        return array.ndim == 2
    return array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3


def unchangeable(array: np.ndarray) -> bool:
    """Read-only and owning its memory: no view of it can write (short of setting the flag back)."""
    return not array.flags.writeable and array.flags.owndata


class RecentArrays:
    """A least-recently-used map path -> array, bounded by the arrays' total bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._arrays: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, path: str, array: np.ndarray) -> None:
        """Keep a copy (or an unchangeable array itself), if the array round-trips and fits;
        evicts the oldest entries for room."""
        if not round_trips(array) or array.nbytes > self.max_bytes:
            return
        kept = array if unchangeable(array) else array.copy()
        with self._lock:
            self._drop(path)
            while self._arrays and self._bytes + kept.nbytes > self.max_bytes:
                self._drop(next(iter(self._arrays)))
            self._arrays[path] = kept
            self._bytes += kept.nbytes

    def get(self, path: str) -> np.ndarray | None:
        """A copy of the array stored at `path` by this process (an unchangeable one itself), or None."""
        with self._lock:
            array = self._arrays.get(path)
            if array is None:
                return None
            self._arrays.move_to_end(path)
        return array if unchangeable(array) else array.copy()

    def equal_at(self, array: np.ndarray, paths: list[str]) -> str | None:
        """The first of `paths` whose kept array equals `array` (shape, dtype and every value),
        without copying it (~1 ms for the canvas); None when none does."""
        with self._lock:
            for path in paths:
                kept = self._arrays.get(path)
                if kept is not None and kept.shape == array.shape and kept.dtype == array.dtype:
                    if np.array_equal(kept, array):
                        return path
        return None

    def _drop(self, path: str) -> None:
        array = self._arrays.pop(path, None)
        if array is not None:
            self._bytes -= array.nbytes
