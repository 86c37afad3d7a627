"""Flux and Gemini run at the same time inside the `generate_images` step (no timing involved)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

from jewel_dagster.defs.assets import ALL_ASSETS
from jewel_dagster.resources.selection import build_resources
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import artifact_path
from jewel_dagster.vision import imaging
from tests.support.waiting_generator import waiting_generator

MEETING = threading.Barrier(2, timeout=20)


def test_flux_and_gemini_overlap(tmp_path: Path) -> None:
    resources: dict[str, Any] = build_resources(PipelineSettings(local_blob_root=str(tmp_path)))
    resources["flux_generator"] = waiting_generator(MEETING)  # run one after the other, both time out
    resources["gemini_generator"] = waiting_generator(MEETING)
    store = resources["blob_store"]
    image = np.full((40, 30, 3), 120, np.uint8)
    mask = np.zeros((40, 30), bool)
    mask[10:20, 10:20] = True
    store.put(artifact_path("r", "background_removed_image", "png"), imaging.encode_png(image))
    store.put(artifact_path("r", "final_mask", "png"), imaging.encode_png(mask))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("requests", ["r"])
        result = dg.materialize(
            ALL_ASSETS,
            selection=["flux_generation", "gemini_generation"],
            partition_key="r",
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
    assert result.success, "the generators did not overlap: the barrier timed out"
