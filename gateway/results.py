"""Reads a finished request's artifacts from the blob store and shapes the seed's `result`."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from jewel_dagster.contract import CHECK_NAME, PREPROCESS_JOB, AssetName
from jewel_dagster.resources.blob_store import BlobNotFoundError, BlobStore, artifact_path
from jewel_dagster.vision import imaging

_ADDRESS = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s)'\"]+", re.IGNORECASE)


def hide_addresses(message: str) -> str:
    """A service's URL in a message is internal: the caller sees `[internal address]`."""
    return _ADDRESS.sub("[internal address]", message)


class ResultReader:
    """Builds results once per run: the JPEG re-encoding of two canvases costs ~0.2 s."""

    def __init__(self, store: BlobStore, url_lifetime: timedelta = timedelta(hours=1), cache_size: int = 32) -> None:
        self._store = store
        self._url_lifetime = url_lifetime
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def result_of(
        self,
        request_id: str,
        run_id: str,
        job_name: str,
        read_check: Callable[[str], dict[str, Any] | None],
    ) -> dict[str, Any]:
        with self._lock:
            cached = self._cache.get(run_id)
            if cached is not None:
                self._cache.move_to_end(run_id)
        if cached is None:
            cached = self._build(request_id, job_name)
            if job_name != PREPROCESS_JOB:
                check = read_check(request_id)
                cached["checks"] = {CHECK_NAME: check} if check else {}
                if cached.get("flux_metrics") is None:
                    # Not in the reference: why the metrics are null (the images still stand).
                    reason = (check or {}).get("reason") or "the fidelity metrics were not measured"
                    cached["flux_metrics_error"] = hide_addresses(reason)
            with self._lock:
                self._cache[run_id] = cached
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        # Signed URLs are made per answer: a cached one could be handed out after it expired.
        return {**cached, **self._signed_urls(request_id, cached)}

    def _signed_urls(self, request_id: str, result: dict[str, Any]) -> dict[str, str]:
        urls = {}
        for key, name in (("flux_result", AssetName.FLUX_GENERATION), ("gemini_result", AssetName.GEMINI_GENERATION)):
            if result.get(f"{key}_base64") is None:
                continue  # preprocess results, or Gemini absent: nothing to link to
            url = self._store.signed_url(artifact_path(request_id, name, "png"), self._url_lifetime)
            if url is not None:
                urls[f"{key}_url"] = url
        return urls

    def _uri(self, request_id: str, name: str) -> str:
        return self._store.uri_for(artifact_path(request_id, name, "png"))

    def _jpeg_base64(self, request_id: str, name: str) -> str | None:
        try:
            png = self._store.get_path(artifact_path(request_id, name, "png"))
        except BlobNotFoundError:
            return None  # e.g. Gemini absent: stored as JSON null
        return base64.b64encode(imaging.encode_jpeg(imaging.decode_png(png))).decode("ascii")

    def _json(self, request_id: str, name: str) -> Any:
        try:
            return json.loads(self._store.get_path(artifact_path(request_id, name, "json")))
        except BlobNotFoundError:
            return None

    def _build(self, request_id: str, job_name: str) -> dict[str, Any]:
        uris = {
            "imageUri": self._uri(request_id, AssetName.BACKGROUND_REMOVED_IMAGE),
            "maskUri": self._uri(request_id, AssetName.JEWELRY_MASK),
        }
        if job_name == PREPROCESS_JOB:
            return uris
        return {
            "flux_result_base64": self._jpeg_base64(request_id, AssetName.FLUX_GENERATION),
            "gemini_result_base64": self._jpeg_base64(request_id, AssetName.GEMINI_GENERATION),
            "flux_metrics": self._json(request_id, AssetName.FLUX_METRICS),
            **uris,
            "finalMaskUri": self._uri(request_id, AssetName.FINAL_MASK),
        }
