"""Loads come from this run first: a run of a partition alongside another run of it (a UI run
beside a request's run) keeps its own inputs, and a re-execution reads its parent's."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest

from jewel_dagster.contract import run_config_ops
from jewel_dagster.defs.assets import ALL_ASSETS
from jewel_dagster.resources.blob_store import BlobStore
from jewel_dagster.resources.io_manager import PARENT_RUN_TAG, ROOT_RUN_TAG, run_lineage
from jewel_dagster.resources.local_services import LocalMaskRefiner
from jewel_dagster.resources.selection import build_resources
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import artifact_path, strokes_path
from jewel_dagster.vision import imaging
from jewel_dagster.vision.imaging import CanvasStroke, Mask
from tests.support.instances import stack_storage_instance
from tests.support.photos import RING_CLICK, synthetic_ring, to_jpeg

RID = "side-by-side"


def _config(store: BlobStore, seed: int) -> dict[str, Any]:
    image, _ = synthetic_ring(600, 800, seed=seed)
    upload = store.put(f"requests/{RID}/upload-{seed}", to_jpeg(image))
    # A stroke: without any, the mask is kept without a refiner call, and `OtherRunMeanwhile` is
    # the refiner that runs the other run.
    stroke = [{"points": [{"x": 0.1, "y": 0.1}, {"x": 0.12, "y": 0.1}], "mode": "add", "size": 4}]
    strokes = store.put(strokes_path(RID, f"strokes-{seed}"), json.dumps(stroke).encode())
    sections = {
        "original_image": {"image_uri": upload},
        "background_removed_image": {"mode": "keep"},
        "jewelry_mask": {"points": [RING_CLICK]},
        "refined_mask": {"strokes_uri": strokes},
    }
    return {"ops": run_config_ops(sections)}


class OtherRunMeanwhile(LocalMaskRefiner):
    """While this run refines its mask, another run of the same partition (another photo) runs
    from start to end: every one of its materializations is newer than this run's."""

    def refine(self, mask: Mask, strokes: Sequence[CanvasStroke]) -> Mask:
        other = dg.materialize(
            ALL_ASSETS,
            partition_key=RID,
            instance=self._instance,
            resources=OTHER_RESOURCES,
            run_config=_config(OTHER_RESOURCES["blob_store"], seed=2),
        )
        OTHER_RUN.append(other.run_id)
        return super().refine(mask, strokes)


OTHER_RESOURCES: dict[str, Any] = {}
OTHER_RUN: list[str] = []


def _stored(store: BlobStore, run_id: str, name: str) -> np.ndarray:
    return imaging.decode_png(store.get_path(artifact_path(RID, name, "png", run_id)))


@pytest.fixture
def instant_resources(tmp_path: Path) -> dict[str, Any]:
    """The instant stand-ins (LOCAL_BACKENDS=instant): what is asserted is which run's values each
    step loads, told apart by the two photos' pixels, which the instant Flux keeps under the mask
    as the local one does (the classical vision of two full runs cost ~5 CPU-s, 2026-12-05)."""
    return build_resources(PipelineSettings(local_blob_root=str(tmp_path / "blobs"), local_backends="instant"))


def test_a_run_beside_another_run_of_the_partition_keeps_its_own_inputs(instant_resources: dict[str, Any]) -> None:
    store: BlobStore = instant_resources["blob_store"]
    OTHER_RESOURCES.clear()
    OTHER_RESOURCES.update(instant_resources)
    OTHER_RUN.clear()
    with stack_storage_instance() as instance:
        instance.add_dynamic_partitions("requests", [RID])
        mine = dg.materialize(
            ALL_ASSETS,
            partition_key=RID,
            instance=instance,
            resources={**instant_resources, "mask_refiner": OtherRunMeanwhile()},
            run_config=_config(store, seed=1),
        )
    assert mine.success and OTHER_RUN
    for run_id in (mine.run_id, OTHER_RUN[0]):
        # Each run's Flux image keeps the jewelry pixels of its own prepared image: the
        # generations step (a later step than the one that made the image) loaded its own run's.
        prepared = _stored(store, run_id, "background_removed_image")
        final = _stored(store, run_id, "final_mask")
        flux = _stored(store, run_id, "flux_generation")
        assert np.array_equal(flux[final], prepared[final]), run_id
    mine_prepared = _stored(store, mine.run_id, "background_removed_image")
    other_prepared = _stored(store, OTHER_RUN[0], "background_removed_image")
    assert not np.array_equal(mine_prepared, other_prepared)  # two photos: the test can tell them apart


def test_a_re_execution_reads_its_parent_then_its_root() -> None:
    job = dg.GraphDefinition("empty").to_job()
    with stack_storage_instance() as instance:
        root = instance.create_run_for_job(job)
        parent = instance.create_run_for_job(job, tags={PARENT_RUN_TAG: root.run_id, ROOT_RUN_TAG: root.run_id})
        child = instance.create_run_for_job(job, tags={PARENT_RUN_TAG: parent.run_id, ROOT_RUN_TAG: root.run_id})
        assert run_lineage(instance, child) == [child.run_id, parent.run_id, root.run_id]
        assert run_lineage(instance, root) == [root.run_id]
