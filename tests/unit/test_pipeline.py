"""The asset graph materialized in-process on the local backends, for one request partition."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest

from jewel_dagster.contract import run_config_ops
from jewel_dagster.defs.assets import ALL_ASSETS, GEMINI_REASON, GENERATE_ASSETS, PREPROCESS_ASSETS, prepare_canvas
from jewel_dagster.resources.blob_store import BlobStore, LocalBlobStore
from jewel_dagster.resources.http_services import TransientServiceError
from jewel_dagster.resources.io_manager import BlobIOManager
from jewel_dagster.resources.local_services import (
    InstantBackgroundRemover,
    InstantGenerator,
    InstantSegmenter,
    LocalImageManipulator,
)
from jewel_dagster.resources.selection import build_resources
from jewel_dagster.resources.services import Generation, MaskRefiner, ZoomCheck
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import strokes_path
from jewel_dagster.vision import imaging
from jewel_dagster.vision.classical import PixelPoint
from jewel_dagster.vision.imaging import CanvasStroke, CanvasTransform, Mask, RGBImage
from tests.support.artifacts import stored_path
from tests.support.instances import stack_storage_instance
from tests.support.photos import RING_CLICK, coffee_jpeg, synthetic_ring, to_jpeg

CANVAS = (imaging.CANVAS_HEIGHT, imaging.CANVAS_WIDTH)


def _artifact(store: BlobStore, rid: str, name: str) -> Any:
    import json

    png = stored_path(store, rid, name, "png")
    if store.exists_path(png):
        return imaging.decode_png(store.get_path(png))
    return json.loads(store.get_path(stored_path(store, rid, name, "json")))


def _strokes(store: BlobStore, rid: str, strokes: list[dict[str, Any]]) -> dict[str, str]:
    """The refined_mask config for ``strokes``: stored as a blob, as the gateway does."""
    return {"strokes_uri": store.put(strokes_path(rid, "test"), json.dumps(strokes).encode())}


def _materialize(
    assets: list[Any], rid: str, resources: dict[str, Any], ops: dict[str, Any], instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions("requests", [rid])
    return dg.materialize(
        ALL_ASSETS,
        selection=assets,
        partition_key=rid,
        instance=instance,
        resources=resources,
        run_config={"ops": run_config_ops(ops)},
        raise_on_error=False,
    )


@pytest.fixture
def instant_resources(tmp_path: Path) -> dict[str, Any]:
    """The instant stand-ins (LOCAL_BACKENDS=instant): for the tests of what the graph does with
    a request (stages, supplied masks, absent generators), where the pixels of the classical
    vision are not what is asserted (test_full_job_on_a_real_photo asserts those)."""
    return build_resources(PipelineSettings(local_blob_root=str(tmp_path / "blobs"), local_backends="instant"))


def test_full_job_on_a_real_photo(local_resources: dict[str, Any]) -> None:
    store: BlobStore = local_resources["blob_store"]
    rid = "jewelry-gen-test-1"
    upload = store.put(f"requests/{rid}/upload", coffee_jpeg())
    stroke = {"points": [{"x": 0.05, "y": 0.1}, {"x": 0.15, "y": 0.1}], "mode": "add", "size": 40}
    with stack_storage_instance() as instance:
        result = _materialize(
            ALL_ASSETS,
            rid,
            local_resources,
            {
                "original_image": {"image_uri": upload},
                "jewelry_mask": {"points": [{"x": 0.45, "y": 0.42, "label": 1}, {"x": 0.02, "y": 0.98, "label": 0}]},
                "refined_mask": _strokes(store, rid, [stroke]),
            },
            instance,
        )
        assert result.success
        events = result.get_asset_materialization_events()
        materialized = {e.asset_key.path[-1] for e in events}
        for event in events:
            meta = event.materialization.metadata
            assert meta["artifact"].value.startswith("file://") and meta["uri"].value.startswith("local://")
            if event.asset_key.path[-1] in ("resized_image", "flux_generation", "gemini_generation"):
                assert meta["preview"].value.startswith("![preview](data:image/jpeg;base64,")
            if event.asset_key.path[-1] == "final_mask":  # a mask: a 1-bit PNG preview
                assert meta["preview"].value.startswith("![preview](data:image/png;base64,")
    assert materialized == {
        "original_image",
        "resized_image",
        "canvas_transform",
        "zoom_check",
        "background_removed_image",
        "jewelry_mask",
        "refined_mask",
        "final_mask",
        "flux_generation",
        "gemini_generation",
        "flux_metrics",
    }
    original = _artifact(store, rid, "original_image")
    assert original.shape == (400, 600, 3)
    for name in ("resized_image", "background_removed_image", "flux_generation", "gemini_generation"):
        assert _artifact(store, rid, name).shape == (*CANVAS, 3), name
    for name in ("jewelry_mask", "refined_mask", "final_mask"):
        mask = _artifact(store, rid, name)
        assert mask.shape == CANVAS and mask.dtype == bool and mask.any(), name

    # The stroke added jewelry where the segmenter had none, on the canvas pixels it maps to.
    transform = imaging.CanvasTransform.from_dict(_artifact(store, rid, "canvas_transform"))
    x, y = transform.to_canvas(0.10, 0.10)
    assert _artifact(store, rid, "refined_mask")[int(y), int(x)]
    assert not _artifact(store, rid, "jewelry_mask")[int(y), int(x)]

    # Both generations keep every jewelry pixel of the prepared image and change the rest.
    prepared = _artifact(store, rid, "background_removed_image")
    final = _artifact(store, rid, "final_mask")
    for name in ("flux_generation", "gemini_generation"):
        generated = _artifact(store, rid, name)
        assert np.array_equal(generated[final], prepared[final]), name
        assert not np.array_equal(generated[~final], prepared[~final]), name

    metrics = _artifact(store, rid, "flux_metrics")
    assert set(metrics) == {"precision", "recall", "iou", "growth_ratio"}
    # The README's fidelity thresholds: precision, recall, IoU at least 0.90, growth 0.90..1.10.
    assert all(0.90 <= metrics[k] <= 1.0 for k in ("precision", "recall", "iou")), metrics
    assert 0.90 <= metrics["growth_ratio"] <= 1.10, metrics


def test_gemini_absent_is_not_materialized_and_says_why(tmp_path: Any) -> None:
    resources = build_resources(PipelineSettings(local_blob_root=str(tmp_path), local_gemini_enabled=False))
    # The instant stand-ins for the vision (what is asserted is what becomes of the absent Gemini);
    # LOCAL_BACKENDS=instant itself would put an instant Gemini in place of the disabled one.
    resources |= {
        "background_remover": InstantBackgroundRemover(),
        "segmenter": InstantSegmenter(),
        "flux_generator": InstantGenerator(),
    }
    store: BlobStore = resources["blob_store"]
    rid = "no-gemini"
    image, _ = synthetic_ring(600, 800)
    upload = store.put(f"requests/{rid}/upload", to_jpeg(image))
    with stack_storage_instance() as instance:
        result = _materialize(
            ALL_ASSETS,
            rid,
            resources,
            {"original_image": {"image_uri": upload}, "jewelry_mask": {"points": [RING_CLICK]}},
            instance,
        )
        assert result.success
        by_name = {e.asset_key.path[-1]: e for e in result.get_asset_materialization_events()}
        # No materialization (a JSON null would show in the UI as a materialized image); the
        # reason is on the Flux image's metadata and in the step's log.
        assert "gemini_generation" not in by_name
        assert "not configured" in by_name["flux_generation"].materialization.metadata[GEMINI_REASON].value
        assert "flux_metrics" in by_name
    folder = Path(store.root) / store.container / "requests" / rid
    assert not list(folder.glob("*/gemini_generation.*"))  # nothing stored, not even a null
    assert _artifact(store, rid, "flux_generation").shape == (*CANVAS, 3)


def test_preprocess_then_generate_on_the_same_partition(instant_resources: dict[str, Any]) -> None:
    store: BlobStore = instant_resources["blob_store"]
    rid = "two-stage"
    image, truth = synthetic_ring(900, 1200)
    upload = store.put(f"requests/{rid}/upload", to_jpeg(image))
    with stack_storage_instance() as instance:
        pre = _materialize(
            PREPROCESS_ASSETS,
            rid,
            instant_resources,
            {
                "original_image": {"image_uri": upload},
                "background_removed_image": {"mode": "keep"},
                "jewelry_mask": {"points": [RING_CLICK]},
            },
            instance,
        )
        assert pre.success
        assert not store.exists_path(stored_path(store, rid, "final_mask", "png"))
        remove_all = {"points": [{"x": 0.0, "y": 0.5}, {"x": 1.0, "y": 0.5}], "mode": "remove", "size": 300}
        gen = _materialize(
            GENERATE_ASSETS, rid, instant_resources, {"refined_mask": _strokes(store, rid, [remove_all])}, instance
        )
        assert gen.success
    jewelry = _artifact(store, rid, "jewelry_mask")
    refined = _artifact(store, rid, "refined_mask")
    assert (jewelry & ~refined).sum() > 1000  # the remove stroke cut through the ring
    assert not (refined & ~jewelry).any()


def test_supplied_mask_and_bad_inputs_fail_with_readable_messages(instant_resources: dict[str, Any]) -> None:
    store: BlobStore = instant_resources["blob_store"]
    image, truth = synthetic_ring(300, 400)
    upload = store.put("requests/supplied/upload", to_jpeg(image))
    mask_uri = store.put("requests/supplied/mask.png", imaging.encode_png(truth))
    with stack_storage_instance() as instance:
        ok = _materialize(
            ALL_ASSETS,
            "supplied",
            instant_resources,
            {
                "original_image": {"image_uri": upload},
                "background_removed_image": {"mode": "keep"},
                "jewelry_mask": {"mask_uri": mask_uri},
            },
            instance,
        )
        assert ok.success
        transform = imaging.CanvasTransform.from_dict(_artifact(store, "supplied", "canvas_transform"))
        expected = imaging.apply_canvas_transform(truth, transform)
        assert np.array_equal(_artifact(store, "supplied", "jewelry_mask"), expected)

        junk = store.put("requests/junk/upload", b"not an image at all")
        bad = _materialize(
            ALL_ASSETS,
            "junk",
            instant_resources,
            {"original_image": {"image_uri": junk}, "jewelry_mask": {"points": [{"x": 0.5, "y": 0.5}]}},
            instance,
        )
        assert not bad.success
        failure = next(e for e in bad.all_events if e.event_type_value == "STEP_FAILURE")
        assert failure.step_key == "prepare_canvas"
        assert "not a usable image" in failure.event_specific_data.error.message


@pytest.mark.parametrize("points", [[{"x": 0.5, "y": 0.5, "label": 0}]])
def test_no_positive_point_fails_the_mask_step(instant_resources: dict[str, Any], points: list[dict[str, Any]]) -> None:
    # The step refuses the request before any segmenter call: the instant stand-ins serve (was
    # the local GrabCut's background removal, ~0.6 s of CPU for nothing asserted).
    store: BlobStore = instant_resources["blob_store"]
    image, _ = synthetic_ring(300, 400)
    upload = store.put("requests/neg/upload", to_jpeg(image))
    with stack_storage_instance() as instance:
        result = _materialize(
            PREPROCESS_ASSETS,
            "neg",
            instant_resources,
            {"original_image": {"image_uri": upload}, "jewelry_mask": {"points": points}},
            instance,
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "segment_jewelry" and "label 1" in failure.event_specific_data.error.message


class _RefusingRefiner(MaskRefiner):
    """A mask refiner that fails any call made to it."""

    @property
    def backend_name(self) -> str:
        return "refusing"

    def refine(self, mask: Mask, strokes: Sequence[CanvasStroke]) -> Mask:
        raise dg.Failure(description=f"the refiner was called with {len(strokes)} strokes", allow_retries=False)


class _BusyRefiner(MaskRefiner):
    """Answers the mask it was sent after spending `cpu_seconds` of this process's CPU, as a
    costly painting would."""

    cpu_seconds: float = 0.3

    @property
    def backend_name(self) -> str:
        return "busy"

    def refine(self, mask: Mask, strokes: Sequence[CanvasStroke]) -> Mask:
        start = time.process_time()
        while time.process_time() - start < self.cpu_seconds:
            pass
        return mask


def _ring_request_refined(
    resources: dict[str, Any], rid: str, refiner: MaskRefiner, strokes: list[dict[str, Any]] | None = None
) -> Any:
    """A whole request on the synthetic ring, materialized with `refiner` (and `strokes`): the
    refined mask's metadata."""
    store: BlobStore = resources["blob_store"]
    image, _ = synthetic_ring(300, 400)
    ops: dict[str, Any] = {
        "original_image": {"image_uri": store.put(f"requests/{rid}/upload", to_jpeg(image))},
        "jewelry_mask": {"points": [RING_CLICK]},
    }
    if strokes:
        ops["refined_mask"] = _strokes(store, rid, strokes)
    with stack_storage_instance() as instance:
        result = _materialize(ALL_ASSETS, rid, {**resources, "mask_refiner": refiner}, ops, instance)
        assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        (refined,) = [
            e.materialization.metadata
            for e in result.get_asset_materialization_events()
            if e.asset_key.path[-1] == "refined_mask"
        ]
    return refined


def test_the_refined_masks_cpu_seconds_are_the_paintings_own(instant_resources: dict[str, Any]) -> None:
    """tests/e2e/test_stroke_limits.py bounds what the costliest allowed strokes cost by the
    `cpu_seconds` the refined mask reports: that figure must be what the painting spent (a figure
    of 0, or read after the painting, passed that test whatever the strokes cost)."""
    stroke = {"points": [{"x": 0.4, "y": 0.4}, {"x": 0.5, "y": 0.5}], "mode": "add", "size": 20}
    refined = _ring_request_refined(instant_resources, "busy-strokes", _BusyRefiner(cpu_seconds=0.3), [stroke])
    assert refined["backend"].value == "busy" and refined["strokes"].value == 1
    assert 0.3 <= refined["cpu_seconds"].value < 1.3, refined["cpu_seconds"]


def test_no_strokes_keep_the_jewelry_mask_without_a_refiner_call(instant_resources: dict[str, Any]) -> None:
    # The refiner applies strokes and nothing else: without strokes the refined mask is the
    # jewelry mask, still materialized, and the A100 is not asked (issue 28: ~0.06 s a request).
    store: BlobStore = instant_resources["blob_store"]
    rid = "no-strokes"
    refined = _ring_request_refined(instant_resources, rid, _RefusingRefiner())
    assert "backend" not in refined and refined["strokes"].value == 0 and refined["changed_pixels"].value == 0
    assert np.array_equal(_artifact(store, rid, "refined_mask"), _artifact(store, rid, "jewelry_mask"))


STORE_WAIT = 10.0  # seconds a store waits for its call to be out; far above a thread's start
_CALLS_OUT: dict[str, threading.Event] = {}  # call -> set once sent: across resource copies
# The blob -> the call the step must have sent before storing it (when the test watches that call).
_CALL_AFTER = {
    "original_image.png": "resize",
    "resized_image.png": "zoom",
    "background_removed_image.png": "segment",
    # Gemini is sent after Flux: a mask stored once Gemini is out was stored after both.
    "refined_mask.png": "gemini",
    "final_mask.png": "gemini",
}


class _CallsOut(LocalImageManipulator):
    """The local manipulator, telling when each call was sent."""

    def resize_to_canvas(self, image: RGBImage) -> tuple[RGBImage, CanvasTransform]:
        _CALLS_OUT["resize"].set()
        return super().resize_to_canvas(image)

    def check_zoom(self, image: RGBImage) -> ZoomCheck:
        _CALLS_OUT["zoom"].set()
        return super().check_zoom(image)


class _SegmentCallOut(InstantSegmenter):
    """The instant segmenter, telling when its call was sent."""

    def segment(self, image: RGBImage, points: Sequence[PixelPoint]) -> Mask:
        _CALLS_OUT["segment"].set()
        return super().segment(image, points)


class _GeneratorCallOut(InstantGenerator):
    """The instant generator, telling when its call (`flux` or `gemini`) was sent."""

    call: str

    def generate(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Generation:
        _CALLS_OUT[self.call].set()
        return super().generate(image, mask, seed, prompt)


class _StoresOnceTheNextCallIsOut(LocalBlobStore):
    """A local store whose images are stored only once the call that follows them was sent (the
    photo after the resize, the canvas after the zoom check, the prepared image after SAM3, the
    masks after Flux and Gemini; the calls the test watches), failing after STORE_WAIT s: a step
    that sends a call only after storing what came before it fails."""

    def put_path(self, path: str, data: bytes, content_type: str) -> None:
        call = _CALL_AFTER.get(path.rsplit("/", 1)[-1])
        if call in _CALLS_OUT and not _CALLS_OUT[call].wait(STORE_WAIT):
            raise dg.Failure(description=f"{path} was stored before the {call} call was sent", allow_retries=False)
        super().put_path(path, data, content_type)


def _overlap_resources(tmp_path: Path, **calls_out: Any) -> tuple[BlobStore, dict[str, Any]]:
    """Instant resources whose blob store holds each store until the call after it is out, with
    the given stand-ins for the services whose calls are watched."""
    settings = PipelineSettings(local_blob_root=str(tmp_path / "blobs"), local_backends="instant")
    store = _StoresOnceTheNextCallIsOut(root=settings.local_blob_root, container=settings.azure_container_name)
    resources = {**build_resources(settings), "blob_store": store, "io_manager": BlobIOManager(blob_store=store)}
    return store, {**resources, **calls_out}


def _prepare_canvas_with_calls_out(tmp_path: Path, rid: str) -> tuple[Any, list[str]]:
    """prepare_canvas on a small ring with the resize and the zoom check held until the store
    they should overlap has begun (_CallsOut); the store and the assets made, in order."""
    _CALLS_OUT.clear()
    _CALLS_OUT.update(resize=threading.Event(), zoom=threading.Event())
    store, resources = _overlap_resources(tmp_path, image_manipulator=_CallsOut())
    image, _ = synthetic_ring(300, 400)
    upload = store.put(f"requests/{rid}/upload", to_jpeg(image))
    with stack_storage_instance() as instance:
        result = _materialize([prepare_canvas], rid, resources, {"original_image": {"image_uri": upload}}, instance)
        assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        return store, [e.asset_key.path[-1] for e in result.get_asset_materialization_events()]


def test_prepare_canvas_stores_each_image_while_the_next_call_is_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The resize and the zoom check have no latency knob: each is sent before the step stores
    # what came before it (the photo, the canvas), not after (issue 28: ~0.1 s of the step). The
    # zoom check follows the resize on the call thread as soon as the canvas is in: it does not
    # wait for the step's own thread to store the photo and take the canvas either, so the photo
    # is held until the zoom check is out (sent after the resize: that covers the resize too; a
    # test of the resize alone cost a materialization of its own).
    monkeypatch.setitem(_CALL_AFTER, "original_image.png", "zoom")
    store, made = _prepare_canvas_with_calls_out(tmp_path, rid := "overlap")
    assert made == ["original_image", "resized_image", "canvas_transform", "zoom_check"]
    canvas = _artifact(store, rid, "resized_image")
    assert canvas.shape == (*CANVAS, 3)
    assert _artifact(store, rid, "zoom_check") == LocalImageManipulator().check_zoom(canvas).to_dict()


def test_segment_and_generate_store_their_images_while_sam3_flux_and_gemini_are_out(tmp_path: Path) -> None:
    # SAM3 is on the critical path: sent before the image it segments is stored (its PNG and
    # preview), not after (issue 28). One preprocess serves this and the generations below (a
    # test of its own cost a materialization).
    # Issue 28: the masks are made in the generations' step (no step of their own) and their PNGs
    # stored once both generators are sent, not on the critical path ahead of the calls; each is
    # still reported after its blob is stored, and before the generations (progress follows).
    _CALLS_OUT.clear()
    _CALLS_OUT.update(segment=threading.Event(), flux=threading.Event(), gemini=threading.Event())
    store, resources = _overlap_resources(
        tmp_path,
        segmenter=_SegmentCallOut(),
        flux_generator=_GeneratorCallOut(call="flux"),
        gemini_generator=_GeneratorCallOut(call="gemini"),
    )
    rid = "masks-overlap"
    image, _ = synthetic_ring(300, 400)
    upload = store.put(f"requests/{rid}/upload", to_jpeg(image))
    with stack_storage_instance() as instance:
        config = {"original_image": {"image_uri": upload}, "jewelry_mask": {"points": [RING_CLICK]}}
        pre = _materialize(PREPROCESS_ASSETS, rid, resources, config, instance)
        assert pre.success, [e.message for e in pre.all_events if e.event_type_value == "STEP_FAILURE"]
        assert {"background_removed_image", "jewelry_mask"} <= {
            e.asset_key.path[-1] for e in pre.get_asset_materialization_events()
        }
        assert _artifact(store, rid, "jewelry_mask").any()
        _CALLS_OUT.update(flux=threading.Event(), gemini=threading.Event())
        result = _materialize(GENERATE_ASSETS, rid, resources, {}, instance)
        assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
        made = [e.asset_key.path[-1] for e in result.get_asset_materialization_events()]
    assert steps == {"generate_images"}
    assert made == ["refined_mask", "final_mask", "flux_generation", "gemini_generation", "flux_metrics"]
    assert np.array_equal(_artifact(store, rid, "final_mask"), _artifact(store, rid, "jewelry_mask"))


_FLUX_CALLS: list[int] = []  # across resource copies: every call of the generator below


class _FluxFailingOnce(InstantGenerator):
    """The instant generator, answering its first call with a 503 (a transient failure)."""

    def generate(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Generation:
        _FLUX_CALLS.append(1)
        if len(_FLUX_CALLS) == 1:
            raise TransientServiceError("FluxGenerator (http://models/a100/generate) answered 503: busy")
        return super().generate(image, mask, seed, prompt)


def test_a_retried_generate_images_makes_each_asset_once(instant_resources: dict[str, Any]) -> None:
    # The masks are stored and reported while Flux is out; Flux then fails and the step is
    # retried (its RetryPolicy). The retry loads the masks its first attempt materialized instead
    # of making and reporting them again (StepValues), and calls Flux again.
    _FLUX_CALLS.clear()
    store: BlobStore = instant_resources["blob_store"]
    rid = "retried-generate"
    image, _ = synthetic_ring(300, 400)
    upload = store.put(f"requests/{rid}/upload", to_jpeg(image))
    with stack_storage_instance() as instance:
        config = {"original_image": {"image_uri": upload}, "jewelry_mask": {"points": [RING_CLICK]}}
        assert _materialize(PREPROCESS_ASSETS, rid, instant_resources, config, instance).success
        resources = {**instant_resources, "flux_generator": _FluxFailingOnce()}
        result = _materialize(GENERATE_ASSETS, rid, resources, {}, instance)
        assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
        made = [e.asset_key.path[-1] for e in result.get_asset_materialization_events()]
    assert len(retries) == 1 and len(_FLUX_CALLS) == 2
    assert made == ["refined_mask", "final_mask", "flux_generation", "gemini_generation", "flux_metrics"]
