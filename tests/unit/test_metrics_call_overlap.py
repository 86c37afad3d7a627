"""The SAM3 call that measures the Flux image starts as soon as Flux answers (issue 28, target 2):
it runs while the generated images are encoded, signed and stored, and while a slower Gemini is
still generating, instead of after both. No timing involved: each test makes the call meet, at a
barrier, something it could only meet if it overlapped; sequential, the barrier times out and
the step fails.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

from jewel_dagster.defs.assets import ALL_ASSETS
from jewel_dagster.resources.blob_store import LocalBlobStore
from jewel_dagster.resources.io_manager import BlobIOManager
from jewel_dagster.resources.selection import build_resources
from jewel_dagster.resources.services import Generation, ImageGenerator, Segmenter
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import artifact_path
from jewel_dagster.vision import imaging
from jewel_dagster.vision.classical import PixelPoint
from jewel_dagster.vision.imaging import Mask, RGBImage
from tests.support.waiting_generator import waiting_generator

# One barrier a test (a broken one stays broken); 10 s is the time a sequential step fails after.
WITH_GEMINI = threading.Barrier(2, timeout=10)
WITH_FLUX_STORED = threading.Barrier(2, timeout=10)
BARRIERS = {"gemini": WITH_GEMINI, "flux stored": WITH_FLUX_STORED}
SELECTION = ["flux_generation", "gemini_generation", "flux_metrics"]


class MeetingSegmenter(Segmenter):
    """Answers the metrics call (the final mask itself) only once its barrier's other party came."""

    barrier: str

    @property
    def backend_name(self) -> str:
        return "test-barrier"

    def segment(self, image: RGBImage, points: Sequence[PixelPoint]) -> Mask:
        BARRIERS[self.barrier].wait()
        return FINAL_MASK.copy()


class QuickGenerator(ImageGenerator):
    @property
    def backend_name(self) -> str:
        return "test-quick"

    def generate(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Generation:
        return Generation(image=image.copy(), model="test-quick")


class MeetingBlobStore(LocalBlobStore):
    """Stores the Flux image's PNG only once the metrics call is under way."""

    def put_path(self, path: str, data: bytes, content_type: str) -> None:
        if path.endswith("/flux_generation.png"):
            WITH_FLUX_STORED.wait()
        super().put_path(path, data, content_type)


IMAGE = np.full((40, 30, 3), 120, np.uint8)
FINAL_MASK = np.zeros((40, 30), bool)
FINAL_MASK[10:20, 10:20] = True


def _materialize(tmp_path: Path, resources: dict[str, Any]) -> dg.ExecuteInProcessResult:
    store = resources["blob_store"]
    store.put(artifact_path("r", "background_removed_image", "png"), imaging.encode_png(IMAGE))
    store.put(artifact_path("r", "final_mask", "png"), imaging.encode_png(FINAL_MASK))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("requests", ["r"])
        return dg.materialize(
            ALL_ASSETS,
            selection=SELECTION,
            partition_key="r",
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )


def _measured(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    materialized = {e.asset_key.path[-1]: e.materialization for e in result.get_asset_materialization_events()}
    assert set(SELECTION) <= set(materialized), sorted(materialized)
    return {k: v.value for k, v in materialized["flux_metrics"].metadata.items()}


def test_the_metrics_call_overlaps_a_slower_gemini(tmp_path: Path) -> None:
    resources: dict[str, Any] = build_resources(PipelineSettings(local_blob_root=str(tmp_path)))
    resources["flux_generator"] = QuickGenerator()
    resources["gemini_generator"] = waiting_generator(WITH_GEMINI)  # only once the metrics call is under way
    resources["segmenter"] = MeetingSegmenter(barrier="gemini")
    result = _materialize(tmp_path, resources)
    assert result.success, "the metrics call waited for Gemini: the barrier timed out"
    metrics = _measured(result)
    assert metrics["iou"] == 1.0 and metrics["backend"] == "test-barrier"


def test_the_metrics_call_is_in_flight_while_the_flux_image_is_stored(tmp_path: Path) -> None:
    resources: dict[str, Any] = build_resources(PipelineSettings(local_blob_root=str(tmp_path)))
    store = MeetingBlobStore(root=str(tmp_path), container=resources["blob_store"].container)
    resources["blob_store"] = store
    resources["io_manager"] = BlobIOManager(blob_store=store)
    resources["flux_generator"] = QuickGenerator()
    resources["gemini_generator"] = QuickGenerator()
    resources["segmenter"] = MeetingSegmenter(barrier="flux stored")
    result = _materialize(tmp_path, resources)
    assert result.success, "the metrics call waited for the Flux image to be stored: the barrier timed out"
    assert _measured(result)["iou"] == 1.0
