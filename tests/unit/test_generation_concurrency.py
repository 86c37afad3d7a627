"""Flux and Gemini run at the same time inside the `generate_images` step (no timing involved)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

from jewel_dagster.defs.assets import ALL_ASSETS
from jewel_dagster.resources.selection import build_resources
from jewel_dagster.resources.services import Generation, ImageGenerator
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import artifact_path
from jewel_dagster.vision import imaging
from jewel_dagster.vision.imaging import Mask, RGBImage

MEETING = threading.Barrier(2, timeout=20)


class MeetingGenerator(ImageGenerator):
    """Returns only once the other generator is running too: run one after the other, it fails."""

    @property
    def backend_name(self) -> str:
        return "test-barrier"

    def generate(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Generation:
        MEETING.wait()
        return Generation(image=image.copy(), model="test-barrier")


def test_flux_and_gemini_overlap(tmp_path: Path) -> None:
    resources: dict[str, Any] = build_resources(PipelineSettings(local_blob_root=str(tmp_path)))
    resources["flux_generator"] = MeetingGenerator()
    resources["gemini_generator"] = MeetingGenerator()
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
