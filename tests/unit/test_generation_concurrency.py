"""Flux and Gemini run at the same time inside the `generate_images` step (no timing involved),
each call prepared before either starts."""

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
from tests.support.waiting_generator import waiting_generator

MEETING = threading.Barrier(2, timeout=20)


def _stored_inputs(resources: dict[str, Any]) -> None:
    store = resources["blob_store"]
    image = np.full((40, 30, 3), 120, np.uint8)
    mask = np.zeros((40, 30), bool)
    mask[10:20, 10:20] = True
    store.put(artifact_path("r", "background_removed_image", "png"), imaging.encode_png(image))
    store.put(artifact_path("r", "final_mask", "png"), imaging.encode_png(mask))


def _generate(resources: dict[str, Any]) -> dg.ExecuteInProcessResult:
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
    return result


def test_flux_and_gemini_overlap(tmp_path: Path) -> None:
    resources: dict[str, Any] = build_resources(PipelineSettings(local_blob_root=str(tmp_path)))
    resources["flux_generator"] = waiting_generator(MEETING)  # run one after the other, both time out
    resources["gemini_generator"] = waiting_generator(MEETING)
    _stored_inputs(resources)
    assert _generate(resources).success, "the generators did not overlap: the barrier timed out"


EVENTS: list[str] = []


class RecordingGenerator(ImageGenerator):
    label: str

    @property
    def backend_name(self) -> str:
        return f"test-{self.label}"

    def prepare(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Any:
        EVENTS.append(f"{self.label} prepared")
        return super().prepare(image, mask, seed, prompt)

    def generate(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Generation:
        EVENTS.append(f"{self.label} called")
        return Generation(image=image.copy(), model=self.backend_name)


def test_both_calls_are_prepared_before_either_starts(tmp_path: Path) -> None:
    """Flux's request is encoded (`prepare`) before Gemini's thread starts: on the critical path
    that encode no longer shares the cores with Gemini's (issue 28)."""
    resources: dict[str, Any] = build_resources(PipelineSettings(local_blob_root=str(tmp_path)))
    resources["flux_generator"] = RecordingGenerator(label="flux")
    resources["gemini_generator"] = RecordingGenerator(label="gemini")
    _stored_inputs(resources)
    EVENTS.clear()
    assert _generate(resources).success
    assert EVENTS[:2] == ["flux prepared", "gemini prepared"]
    assert sorted(EVENTS[2:]) == ["flux called", "gemini called"]
