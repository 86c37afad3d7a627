"""Picks every resource implementation from the settings, in one place."""

from __future__ import annotations

from typing import Any

from jewel_dagster.io_manager import BlobIOManager
from jewel_dagster.local_services import (
    DisabledGenerator,
    LocalBackgroundRemover,
    LocalImageManipulator,
    LocalMaskRefiner,
    LocalSegmenter,
    LocalStudioGenerator,
)
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage import BlobStore, LocalBlobStore


def build_blob_store(settings: PipelineSettings) -> BlobStore:
    return LocalBlobStore(root=settings.local_blob_root, container=settings.azure_container_name)


def build_resources(settings: PipelineSettings) -> dict[str, Any]:
    blob_store = build_blob_store(settings)
    gemini = (
        LocalStudioGenerator(style="radial")
        if settings.local_gemini_enabled
        else DisabledGenerator(reason="Gemini is not configured (LOCAL_GEMINI_ENABLED=false)")
    )
    return {
        "blob_store": blob_store,
        "io_manager": BlobIOManager(blob_store=blob_store),
        "image_manipulator": LocalImageManipulator(zoom_threshold=settings.zoom_threshold),
        "background_remover": LocalBackgroundRemover(),
        "segmenter": LocalSegmenter(),
        "mask_refiner": LocalMaskRefiner(),
        "flux_generator": LocalStudioGenerator(style="sweep", grow_px=settings.local_flux_grow_px),
        "gemini_generator": gemini,
    }
