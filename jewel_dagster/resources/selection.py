"""Picks every resource implementation from the settings, in one place.

An unset service URL selects the in-process local implementation; a set one, the HTTP client.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import SecretStr

from jewel_dagster.resources.blob_store import AzureBlobStore, BlobStore, LocalBlobStore
from jewel_dagster.resources.fidelity import FidelityThresholds
from jewel_dagster.resources.gemini import GeminiGenerator
from jewel_dagster.resources.http_services import (
    HttpBackgroundRemover,
    HttpFluxGenerator,
    HttpImageManipulator,
    HttpMaskRefiner,
    HttpSegmenter,
)
from jewel_dagster.resources.io_manager import BlobIOManager
from jewel_dagster.resources.local_services import (
    DisabledGenerator,
    InstantBackgroundRemover,
    InstantGenerator,
    InstantSegmenter,
    LocalBackgroundRemover,
    LocalImageManipulator,
    LocalMaskRefiner,
    LocalSegmenter,
    LocalStudioGenerator,
)
from jewel_dagster.resources.provenance import ImageProvenance
from jewel_dagster.resources.services import ImageGenerator
from jewel_dagster.settings import PipelineSettings


def build_blob_store(settings: PipelineSettings, inside_dagster: bool = True) -> BlobStore:
    """Azure when credentials are set, else the local folder.

    Inside Dagster, secrets are passed as `dg.EnvVar` so they never land in stored definitions;
    the gateway (outside Dagster, where EnvVar is not resolved) passes the values themselves.
    """
    if not settings.uses_azure:
        return LocalBlobStore(root=settings.local_blob_root, container=settings.azure_container_name)

    def secret(name: str, value: SecretStr | None) -> str | None:
        if value is None:
            return None
        return dg.EnvVar(name) if inside_dagster else value.get_secret_value()

    return AzureBlobStore(
        container=settings.azure_container_name,
        connection_string=secret("AZURE_STORAGE_CONNECTION_STRING", settings.azure_storage_connection_string),
        account_name=settings.azure_account_name,
        account_key=secret("AZURE_ACCOUNT_KEY", settings.azure_account_key),
        account_url=settings.azure_account_url,
    )


def _gemini(settings: PipelineSettings) -> ImageGenerator:
    backend = settings.gemini_backend
    if backend == "google":
        # EnvVar keeps the key out of Dagster's stored definitions; it is read at run time.
        return GeminiGenerator(
            api_key=dg.EnvVar("GEMINI_API_KEY"),
            model=settings.gemini_model,
            base_url=settings.gemini_base_url,
            timeout_seconds=settings.service_timeout_seconds,
        )
    if backend == "no-key":
        return DisabledGenerator(reason="GEMINI_API_KEY is not set")
    if backend == "local":
        return LocalStudioGenerator(style="radial")
    return DisabledGenerator(reason="Gemini is not configured (LOCAL_GEMINI_ENABLED=false)")


def _provenance(settings: PipelineSettings) -> ImageProvenance:
    # EnvVar keeps the key out of Dagster's stored definitions (the chain is public).
    key = dg.EnvVar("C2PA_SIGNING_KEY") if settings.c2pa_signing_key is not None else None
    return ImageProvenance(
        enabled=settings.c2pa == "on",
        signing_cert=settings.c2pa_signing_cert,
        signing_key=key,
        test_folder=str(settings.c2pa_test_path),
    )


def build_resources(settings: PipelineSettings) -> dict[str, Any]:
    blob_store = build_blob_store(settings)
    # Every HTTP model client: its timeout, its retries and how images travel (docs/service-contracts.md).
    http: dict[str, Any] = {
        "timeout_seconds": settings.service_timeout_seconds,
        "call_attempts": settings.service_call_attempts,
        "wire_mode": settings.service_wire,
        "image_encoding": settings.service_image_encoding,
    }
    a100 = settings.a100_server_url
    instant = settings.local_backends == "instant"
    resources = {
        "blob_store": blob_store,
        "io_manager": BlobIOManager(
            blob_store=blob_store,
            png_filter=settings.artifact_png_filter,
            reuse_megabytes=settings.artifact_reuse_megabytes,
        ),
        "image_manipulator": (
            HttpImageManipulator(base_url=settings.image_manipulator_url, **http)
            if settings.image_manipulator_url
            else LocalImageManipulator(zoom_threshold=settings.zoom_threshold)
        ),
        "background_remover": (
            HttpBackgroundRemover(base_url=settings.birefnet_url, **http)
            if settings.birefnet_url
            else LocalBackgroundRemover()
        ),
        "segmenter": (HttpSegmenter(base_url=settings.sam3_url, **http) if settings.sam3_url else LocalSegmenter()),
        "mask_refiner": (
            HttpMaskRefiner(base_url=a100, **http)
            if a100
            else LocalMaskRefiner(busy_seconds=settings.local_refine_busy_seconds)
        ),
        "flux_generator": (
            HttpFluxGenerator(base_url=a100, **http)
            if a100
            else LocalStudioGenerator(
                style="sweep", grow_px=settings.local_flux_grow_px, grow_seeds=settings.local_flux_grow_seeds
            )
        ),
        "gemini_generator": _gemini(settings),
        "provenance": _provenance(settings),
        "fidelity": FidelityThresholds(
            min_iou=settings.check_min_iou,
            min_precision=settings.check_min_precision,
            min_recall=settings.check_min_recall,
            min_growth_ratio=settings.check_min_growth_ratio,
            max_growth_ratio=settings.check_max_growth_ratio,
        ),
    }
    if instant:
        # Only the local implementations are swapped; configured HTTP services stay.
        asleep = settings.local_instant_call_seconds
        if not settings.birefnet_url:
            resources["background_remover"] = InstantBackgroundRemover(call_seconds=asleep)
        if not settings.sam3_url:
            resources["segmenter"] = InstantSegmenter(call_seconds=asleep)
        if not a100:
            resources["flux_generator"] = InstantGenerator(call_seconds=asleep)
            resources["gemini_generator"] = InstantGenerator(call_seconds=asleep)
    return resources
