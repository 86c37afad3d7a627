"""Reads a finished request's artifacts from the blob store and shapes the seed's `result`."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import c2pa

from jewel_dagster.contract import CHECK_NAME, PREPROCESS_JOB, AssetName
from jewel_dagster.provenance.reader import read_manifest
from jewel_dagster.public_names import hide_addresses, public_backend
from jewel_dagster.resources.blob_store import BlobNotFoundError, BlobStore
from jewel_dagster.storage_layout import artifact_path, jpeg_rendition_path
from jewel_dagster.vision import imaging

_log = logging.getLogger(__name__)

# asset name -> blob path of the request's newest materialization of it (None: none recorded)
Locate = Callable[[str], str | None]
# (request id, asset names) -> asset -> the backend its newest materialization names
ReadBackends = Callable[[str, Sequence[str]], dict[str, str]]

# `result.backends`: which implementation made each part of the result, named by the service
# the reference README names (the A100 server does two jobs: its refiner and Flux).
BACKEND_OF_ASSET: dict[str, str] = {
    AssetName.RESIZED_IMAGE: "imageManipulator",
    AssetName.BACKGROUND_REMOVED_IMAGE: "birefnet",
    AssetName.JEWELRY_MASK: "sam3",
    AssetName.REFINED_MASK: "maskRefiner",
    AssetName.FLUX_GENERATION: "flux",
    AssetName.GEMINI_GENERATION: "gemini",
}
_PREPROCESS_ASSETS = (AssetName.RESIZED_IMAGE, AssetName.BACKGROUND_REMOVED_IMAGE, AssetName.JEWELRY_MASK)


def _no_locate(name: str) -> str | None:
    return None


def _no_backends(request_id: str, assets: Sequence[str]) -> dict[str, str]:
    return {}


class _Paths:
    """Where one run's result artifacts are: the run's own folder first (what it materialized),
    then the newest materialization's recorded path (what it depended on, e.g. a generate run's
    canvas and mask from its preprocess), then the flat path of artifacts stored before runs had
    folders."""

    def __init__(self, store: BlobStore, request_id: str, run_id: str, locate: Locate) -> None:
        self._store, self._request_id, self._run_id, self._locate = store, request_id, run_id, locate

    def find(self, name: str, extension: str) -> str | None:
        """The path of the artifact, None when it is stored as the other kind (Gemini's JSON null)."""
        for ext in (extension, *(e for e in ("png", "json") if e != extension)):
            own = artifact_path(self._request_id, name, ext, self._run_id)
            if self._store.exists_path(own):
                return own if ext == extension else None
        located = self._locate(name)
        if located:
            return located if located.endswith(f".{extension}") else None
        return artifact_path(self._request_id, name, extension)

    def find_beside(self, anchor: str | None, name: str, extension: str) -> str | None:
        """An artifact made with `anchor` (Gemini's image and the metrics, with the Flux image):
        from the folder of the run that made the anchor, None when that run made none (Gemini
        absent, metrics not measured: not materialized), never an older run's. Artifacts stored
        before runs had folders are found as `find` finds them."""
        folder = anchor.rsplit("/", 1)[0] if anchor else None
        if folder is None or folder == artifact_path(self._request_id, name, extension).rsplit("/", 1)[0]:
            return self.find(name, extension)
        for ext in (extension, *(e for e in ("png", "json") if e != extension)):
            path = f"{folder}/{name}.{ext}"
            if self._store.exists_path(path):
                return path if ext == extension else None  # a JSON null stored by earlier versions
        return None


class ResultReader:
    """Builds results once per run: reading the two JPEGs (or, for images stored before their
    JPEG renditions, re-encoding two canvases: ~0.2 s)."""

    def __init__(
        self,
        store: BlobStore,
        url_lifetime: timedelta = timedelta(hours=1),
        cache_size: int = 32,
        url_base: str = "",
    ) -> None:
        self._store = store
        self._url_lifetime = url_lifetime
        self._url_base = url_base  # RESULT_URL_BASE: "", "gateway" or a public base URL
        self._cache: OrderedDict[str, tuple[dict[str, Any], dict[str, str]]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def result_of(
        self,
        request_id: str,
        run_id: str,
        job_name: str,
        read_check: Callable[[str], dict[str, Any] | None],
        locate: Locate = _no_locate,
        read_backends: ReadBackends = _no_backends,
    ) -> dict[str, Any]:
        with self._lock:
            cached = self._cache.get(run_id)
            if cached is not None:
                self._cache.move_to_end(run_id)
        if cached is None:
            cached = self._build(_Paths(self._store, request_id, run_id, locate), job_name)
            # Not in the reference: which implementation made each part (a stand-in or a service).
            assets = _PREPROCESS_ASSETS if job_name == PREPROCESS_JOB else tuple(BACKEND_OF_ASSET)
            found = read_backends(request_id, assets)
            cached[0]["backends"] = {
                BACKEND_OF_ASSET[asset]: public_backend(found[asset]) for asset in assets if asset in found
            }
            if job_name != PREPROCESS_JOB:
                check = read_check(request_id)
                if check:  # its texts quote the service's error, and so its address
                    check = {
                        k: hide_addresses(v) if k in ("violations", "reason") and v else v for k, v in check.items()
                    }
                cached[0]["checks"] = {CHECK_NAME: check} if check else {}
                if cached[0].get("flux_metrics") is None:
                    # Not in the reference: why the metrics are null (the images still stand).
                    reason = (check or {}).get("reason") or "the fidelity metrics were not measured"
                    cached[0]["flux_metrics_error"] = hide_addresses(reason)
            with self._lock:
                self._cache[run_id] = cached
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        # Signed URLs are made per answer: a cached one could be handed out after it expired.
        result, generated = cached
        return {**result, **self._signed_urls(result, generated, request_id, run_id)}

    def _signed_urls(
        self, result: dict[str, Any], generated: dict[str, str], request_id: str, run_id: str
    ) -> dict[str, str]:
        urls = {}
        for key, asset in (("flux_result", AssetName.FLUX_GENERATION), ("gemini_result", AssetName.GEMINI_GENERATION)):
            if result.get(f"{key}_base64") is None or key not in generated:
                continue  # preprocess results, or Gemini absent: nothing to link to
            if self._url_base == "gateway":
                # This run's image when it sits in the run's folder; else the route's newest value.
                route = f"/workflow/{quote(request_id)}/artifacts/{asset}.png"
                in_run_folder = generated[key] == artifact_path(request_id, asset, "png", run_id)
                url: str | None = f"{route}?runId={quote(run_id)}" if in_run_folder else route
            else:
                url = self._store.signed_url(generated[key], self._url_lifetime)
                if url is not None and self._url_base:
                    url = rebased(url, self._url_base)
            if url is not None:
                urls[f"{key}_url"] = url
        return urls

    def _uri(self, paths: _Paths, name: str) -> str | None:
        path = paths.find(name, "png")
        return self._store.uri_for(path) if path else None

    def _jpeg(self, path: str | None) -> bytes | None:
        if path is None:
            return None
        try:  # stored (and signed) by the step that made the image: no decode and re-encode here
            return self._store.get_path(jpeg_rendition_path(path))
        except BlobNotFoundError:
            pass  # stored before renditions existed: made here, as it always was (unsigned)
        try:
            png = self._store.get_path(path)
        except BlobNotFoundError:
            return None  # e.g. Gemini absent: stored as JSON null
        return imaging.encode_jpeg(imaging.decode_png(png))

    def _json(self, path: str | None) -> Any:
        if path is None:
            return None
        try:
            return json.loads(self._store.get_path(path))
        except BlobNotFoundError:
            return None

    def _build(self, paths: _Paths, job_name: str) -> tuple[dict[str, Any], dict[str, str]]:
        uris = {
            "imageUri": self._uri(paths, AssetName.BACKGROUND_REMOVED_IMAGE),
            "maskUri": self._uri(paths, AssetName.JEWELRY_MASK),
        }
        if job_name == PREPROCESS_JOB:
            return uris, {}
        flux = paths.find(AssetName.FLUX_GENERATION, "png")
        gemini = paths.find_beside(flux, AssetName.GEMINI_GENERATION, "png")
        generated = {key: path for key, path in (("flux_result", flux), ("gemini_result", gemini)) if path}
        jpegs = {"flux_result": self._jpeg(flux), "gemini_result": self._jpeg(gemini)}
        result = {
            "flux_result_base64": _base64(jpegs["flux_result"]),
            "gemini_result_base64": _base64(jpegs["gemini_result"]),
            # Not in the reference: what each image's C2PA manifest says (the page's "Made with AI").
            "provenance": {key: provenance_summary(data) for key, data in jpegs.items() if data is not None},
            "flux_metrics": self._json(paths.find_beside(flux, AssetName.FLUX_METRICS, "json")),
            **uris,
            "finalMaskUri": self._uri(paths, AssetName.FINAL_MASK),
        }
        return result, generated


def rebased(url: str, base: str) -> str:
    """`url` with its scheme, host and port replaced by `base`'s, and `base`'s path put in front of
    its path: the store's signed URL as clients reach it through a proxy (the SAS token signs the
    container and blob path, not the host, so it stays valid)."""
    parts, onto = urlsplit(url), urlsplit(base)
    return urlunsplit((onto.scheme, onto.netloc, onto.path.rstrip("/") + parts.path, parts.query, ""))


def _base64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data is not None else None


def provenance_summary(jpeg: bytes) -> dict[str, Any] | None:
    """What the image's manifest says, read from the bytes the caller gets (~5 ms a JPEG, once a
    run: results are cached): None when it carries none (C2PA=off, or made before signing)."""
    try:
        report = read_manifest(jpeg, "image/jpeg")
    except c2pa.C2paError as exc:
        _log.warning("the result's C2PA manifest cannot be read: %s", exc)
        return None
    return report.summary() if report else None
