"""A cancel that holds: once a run is CANCELING its steps stop at the next output or model call,
the run ends CANCELED (not FAILURE, not a step retry), and nothing more is materialized."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import dagster as dg
import numpy as np
import pytest

from jewel_dagster.contract import run_config_ops
from jewel_dagster.defs.assets import ALL_ASSETS
from jewel_dagster.defs.cancellation import cancel_requested
from jewel_dagster.resources.services import Generation, ImageGenerator, Segmenter
from jewel_dagster.vision.classical import PixelPoint
from jewel_dagster.vision.imaging import Mask, RGBImage
from tests.support.photos import RING_CLICK, synthetic_ring, to_jpeg

CANCELLED_AT: list[float] = []


def _cancel_this_run(backend: Any) -> None:
    """What the gateway's cancel does to the run's row (DefaultRunLauncher.terminate marks it
    CANCELING first); the interrupt that follows is left out, so only the steps' checks act."""
    instance: dg.DagsterInstance = backend._instance
    run = instance.get_run_by_id(backend._run_id)
    assert run is not None
    instance.report_run_canceling(run)
    CANCELLED_AT.append(time.time())


class CancellingSegmenter(Segmenter):
    """Answers with a mask, but the run is cancelled while it works."""

    @property
    def backend_name(self) -> str:
        return "test-cancelling-segmenter"

    def segment(self, image: RGBImage, points: Sequence[PixelPoint]) -> Mask:
        _cancel_this_run(self)
        mask = np.zeros(image.shape[:2], bool)
        mask[100:300, 100:300] = True
        return mask


class CancellingGenerator(ImageGenerator):
    @property
    def backend_name(self) -> str:
        return "test-cancelling-generator"

    def generate(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Generation:
        _cancel_this_run(self)
        return Generation(image=image.copy(), model="test")


def _run(resources: dict[str, Any], rid: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    store = resources["blob_store"]
    image, _ = synthetic_ring(600, 800)
    upload = store.put(f"requests/{rid}/upload", to_jpeg(image))
    instance.add_dynamic_partitions("requests", [rid])
    return dg.materialize(
        ALL_ASSETS,
        partition_key=rid,
        instance=instance,
        resources=resources,
        run_config={
            "ops": run_config_ops(
                {
                    "original_image": {"image_uri": upload},
                    "background_removed_image": {"mode": "keep"},
                    "jewelry_mask": {"points": [RING_CLICK]},
                }
            )
        },
        raise_on_error=False,
    )


@pytest.mark.parametrize(
    ("backend", "made_before_cancel"),
    [
        (
            "segmenter",
            {"original_image", "resized_image", "canvas_transform", "zoom_check"},
        ),
        (
            "flux_generator",
            {
                "original_image",
                "resized_image",
                "canvas_transform",
                "zoom_check",
                "background_removed_image",
                "jewelry_mask",
            },
        ),
    ],
)
def test_a_cancelled_run_stops_and_ends_canceled(
    local_resources: dict[str, Any], backend: str, made_before_cancel: set[str]
) -> None:
    resources = {**local_resources, backend: CancellingSegmenter() if backend == "segmenter" else CancellingGenerator()}
    CANCELLED_AT.clear()
    with dg.instance_for_test() as instance:
        result = _run(resources, f"cancel-{backend.replace('_', '-')}", instance)
        run = instance.get_run_record_by_id(result.run_id)
        assert run is not None
        assert run.dagster_run.status == dg.DagsterRunStatus.CANCELED  # not FAILURE, not SUCCESS
        materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
        # Nothing after the cancel. SAM3 is sent before the image it segments is stored, Flux and
        # Gemini before the masks they are given: a cancel during those calls may come before
        # those materializations or after them.
        racing = {"background_removed_image"} if backend == "segmenter" else {"refined_mask", "final_mask"}
        assert made_before_cancel <= materialized <= made_before_cancel | racing
        types = [e.event_type_value for e in result.all_events]
        assert "STEP_UP_FOR_RETRY" not in types and "STEP_RESTARTED" not in types  # the RetryPolicy stayed out
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert "cancelled" in failure.event_specific_data.error.message
        assert run.end_time is not None and run.end_time - CANCELLED_AT[0] < 2.0


def test_cancel_requested_reads_the_run_status() -> None:
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(dg.GraphDefinition("empty").to_job())
        assert not cancel_requested(instance, run.run_id)
        instance.report_run_canceling(run)
        assert cancel_requested(instance, run.run_id)
        assert not cancel_requested(instance, "unknown-run")


class InterruptedSegmenter(Segmenter):
    """The cancel's interrupt arrives during the call, as the run worker receives it: Dagster's
    RetryPolicy turns an interrupt into a step retry (op_execution_error_boundary)."""

    @property
    def backend_name(self) -> str:
        return "test-interrupted-segmenter"

    def segment(self, image: RGBImage, points: Sequence[PixelPoint]) -> Mask:
        _cancel_this_run(self)
        raise KeyboardInterrupt


def test_the_retry_of_an_interrupted_step_stops_at_once(local_resources: dict[str, Any]) -> None:
    CANCELLED_AT.clear()
    with dg.instance_for_test() as instance:
        result = _run({**local_resources, "segmenter": InterruptedSegmenter()}, "cancel-interrupted", instance)
        run = instance.get_run_record_by_id(result.run_id)
        assert run is not None and run.dagster_run.status == dg.DagsterRunStatus.CANCELED
        materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
        assert "jewelry_mask" not in materialized and "flux_generation" not in materialized
        failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert [e.step_key for e in failures] == ["segment_jewelry"]
        assert "before starting the step" in failures[0].event_specific_data.error.message
        assert run.end_time is not None and run.end_time - CANCELLED_AT[0] < 2.0
