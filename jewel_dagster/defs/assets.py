"""The per-request asset graph: one partition of `requests` per shopper's photo.

Eleven assets, each materialized per request with its own blob, metadata, preview and lineage,
made by three steps (`multi_asset`s with `can_subset=True` and their internal dependencies
declared, so any asset can still be materialized alone from the UI). A step passes its arrays on
in memory and yields its assets in order: each blob is stored (`StepValues.emit`, through the IO
manager's `store`) before the step reports a value-less materialization, so Dagster writes no
HANDLED_OUTPUT events. Each step event and each process hop costs (a run of nine steps wrote ~95
events); four steps wrote about 51 (55 through the stack), three write fewer (issue 28).

The grouping follows the `gpu` pool: a step holds a GPU slot for its whole duration, so the CPU
work of decoding the photo, the canvas and the zoom check sits in a step outside the pool, and
the GPU steps hold the slot only around model calls (and the blob writes of what those calls
return):

- `prepare_canvas` (CPU): original_image, resized_image + canvas_transform, zoom_check
- `segment_jewelry` (gpu): background_removed_image, jewelry_mask
- `generate_images` (gpu): refined_mask, final_mask, flux_generation, gemini_generation,
  flux_metrics and its check; the two images are encoded and signed here (C2PA manifest,
  jewel_dagster/provenance), so every copy of them (blob, signed URL, the API's base64) carries
  the same signed bytes

The brush strokes and the speck removal once had a CPU step of their own, in the pool only when
the A100 server refined. They now run inside `generate_images`, holding its GPU slot: their CPU
is bounded (the stroke limits of `request_inputs`: a typical request's 20 strokes paint in ~20 ms,
the costliest the limits allow in ~75 ms, benchmarks.image_kernels; without strokes there is no
refiner call at all), while a step of its own cost every request two step transitions, its
events and ~0.1 s between SAM3's answer and the Flux call (issue 28). The masks are stored while
Flux and Gemini work, so their blobs are not on the critical path either.

A run that was cancelled stops before its next model call or output (`defs/cancellation.py`).
"""
# No `from __future__ import annotations` here: Dagster reads these annotations at run time.

import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any, TypeVar

import dagster as dg
import numpy as np
from pydantic import ValidationError

from jewel_dagster.contract import (
    CHECK_NAME,
    GENERATE_OP,
    GPU_POOL,
    PARTITIONS_NAME,
    PREPARE_OP,
    SEGMENT_OP,
    AssetName,
)
from jewel_dagster.defs.cancellation import stop_if_cancelled
from jewel_dagster.defs.config import (
    GenerateImagesConfig,
    PrepareCanvasConfig,
    SegmentJewelryConfig,
)
from jewel_dagster.defs.step_values import StepValues
from jewel_dagster.provenance.manifest import GenerationFacts, sha256_hex, sniff_mime
from jewel_dagster.public_names import public_backend
from jewel_dagster.request_inputs import BRUSH_STROKES, BrushStroke
from jewel_dagster.resources.blob_store import BlobStore, BlobStoreError
from jewel_dagster.resources.fidelity import FidelityThresholds
from jewel_dagster.resources.http_services import TransientServiceError
from jewel_dagster.resources.io_manager import BlobIOManager, EncodedImage, upstream_materialization
from jewel_dagster.resources.provenance import ImageProvenance
from jewel_dagster.resources.services import (
    BackgroundRemover,
    Generation,
    ImageGenerator,
    ImageManipulator,
    MaskRefiner,
    Segmenter,
    ZoomCheck,
)
from jewel_dagster.resources.versions import code_versions
from jewel_dagster.settings import get_settings
from jewel_dagster.vision import imaging
from jewel_dagster.vision.classical import PixelPoint
from jewel_dagster.vision.imaging import CanvasTransform, ImageDecodeError

requests_partitions = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)

# Transient service failures (timeouts, 5xx) are retried as step retries; permanent ones
# raise dg.Failure(allow_retries=False) and fail at once. A retried step does not make again
# what its earlier attempt materialized (StepValues).
SERVICE_RETRY = dg.RetryPolicy(max_retries=3, delay=0.5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
# Code versions name the algorithm or model behind an asset: changing one marks earlier
# partitions stale, and the regeneration sensor picks them up.
_settings = get_settings()
_versions = code_versions(_settings)
SPECK_AREA = 64  # mask components smaller than this (canvas pixels) are noise, not jewelry
CANVAS_POINTS = "canvas_points"  # jewelry_mask metadata: the request's clicks in canvas pixels
# flux_generation metadata when Gemini made no image: gemini_generation is then not materialized.
GEMINI_REASON = "gemini_reason"
# original_image metadata: the uploaded photo's SHA-256 and type, named as the generated images'
# C2PA ingredient (by hash: the photo itself never goes into their manifests).
SOURCE_SHA256 = "source_sha256"
SOURCE_FORMAT = "source_format"
CANCEL_POLL_SECONDS = 0.25  # how often a step waiting on Flux and Gemini looks for a cancel

T = TypeVar("T")
A = AssetName


def _key(*names: str) -> set[dg.AssetKey]:
    return {dg.AssetKey(str(name)) for name in names}


def _outs(outs: dict[AssetName, dg.AssetOut]) -> dict[str, dg.AssetOut]:
    return {str(name): out for name, out in outs.items()}


def _internal_deps(deps: dict[AssetName, set[dg.AssetKey]]) -> dict[str, set[dg.AssetKey]]:
    """`internal_asset_deps` by output name: every asset this step's assets depend on."""
    return {str(name): keys for name, keys in deps.items()}


def _external_deps(deps: dict[AssetName, set[dg.AssetKey]]) -> list[dg.AssetKey]:
    """The upstream assets made by other steps (loaded, not Dagster inputs): `deps` of the step."""
    own = _key(*deps)
    return sorted(set().union(*deps.values()) - own, key=lambda key: key.to_user_string())


def _out(description: str, image: bool = True, code_version: str | None = None) -> dg.AssetOut:
    # Optional: a subset run yields only the selected assets (can_subset).
    return dg.AssetOut(
        description=description, kinds={"image"} if image else None, code_version=code_version, is_required=False
    )


def _timed(call: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = call()
    return result, round(time.perf_counter() - start, 3)


def _image_metadata(array: np.ndarray, seconds: float, backend: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "width": int(array.shape[1]),
        "height": int(array.shape[0]),
        "seconds": seconds,
        "preview": dg.MetadataValue.md(f"![preview]({imaging.preview_data_uri(array)})"),
    }
    if array.dtype == bool:
        meta["mask_pixels"] = int(np.count_nonzero(array))
    if backend:
        meta["backend"] = backend
    return meta


def _permanent(message: str) -> dg.Failure:
    return dg.Failure(description=message, allow_retries=False)


def _load_image_blob(blob_store: BlobStore, uri: str, what: str) -> bytes:
    try:
        return blob_store.get(uri)
    except BlobStoreError as exc:
        raise _permanent(f"{what}: {exc}") from exc


# Each step's assets -> what each depends on (in the step or upstream of it): the lineage.
_PREPARE_DEPS: dict[AssetName, set[dg.AssetKey]] = {
    A.ORIGINAL_IMAGE: set(),
    A.RESIZED_IMAGE: _key(A.ORIGINAL_IMAGE),
    A.CANVAS_TRANSFORM: _key(A.ORIGINAL_IMAGE),
    A.ZOOM_CHECK: _key(A.RESIZED_IMAGE),
}

_SEGMENT_DEPS: dict[AssetName, set[dg.AssetKey]] = {
    A.BACKGROUND_REMOVED_IMAGE: _key(A.RESIZED_IMAGE, A.ZOOM_CHECK),
    A.JEWELRY_MASK: _key(A.BACKGROUND_REMOVED_IMAGE, A.CANVAS_TRANSFORM),
}

_GENERATE_DEPS: dict[AssetName, set[dg.AssetKey]] = {
    A.REFINED_MASK: _key(A.JEWELRY_MASK, A.CANVAS_TRANSFORM),
    A.FINAL_MASK: _key(A.REFINED_MASK),
    A.FLUX_GENERATION: _key(A.BACKGROUND_REMOVED_IMAGE, A.FINAL_MASK),
    A.GEMINI_GENERATION: _key(A.BACKGROUND_REMOVED_IMAGE, A.FINAL_MASK),
    # jewelry_mask: its metadata names the request's clicks (`_metrics_points`).
    A.FLUX_METRICS: _key(A.FLUX_GENERATION, A.FINAL_MASK, A.JEWELRY_MASK),
}


@dg.multi_asset(
    name=PREPARE_OP,
    partitions_def=requests_partitions,
    group_name="preprocess",
    outs=_outs(
        {
            A.ORIGINAL_IMAGE: _out("The shopper's photo, decoded to RGB with its EXIF orientation applied."),
            A.RESIZED_IMAGE: _out("The photo on the 2000x2667 canvas, undistorted."),
            A.CANVAS_TRANSFORM: _out("Scale and offset that placed the photo on the canvas.", image=False),
            A.ZOOM_CHECK: _out("Whether the background must be removed, with the deciding score.", image=False),
        }
    ),
    internal_asset_deps=_internal_deps(_PREPARE_DEPS),
    deps=_external_deps(_PREPARE_DEPS),
    can_subset=True,
    retry_policy=SERVICE_RETRY,
)
def prepare_canvas(
    context: dg.AssetExecutionContext,
    io_manager: dg.ResourceParam[BlobIOManager],
    config: PrepareCanvasConfig,
    image_manipulator: ImageManipulator,
    blob_store: BlobStore,
) -> Iterator[dg.MaterializeResult]:
    """The photo decoded, placed on the canvas, and its zoom checked: CPU work, no GPU slot."""
    step = StepValues(context, io_manager)
    calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-canvas")
    try:
        yield from _prepare_canvas(context, config, step, image_manipulator, blob_store, calls)
    finally:
        calls.shutdown(wait=False, cancel_futures=True)


def _prepare_canvas(
    context: dg.AssetExecutionContext,
    config: PrepareCanvasConfig,
    step: StepValues,
    image_manipulator: ImageManipulator,
    blob_store: BlobStore,
    calls: ThreadPoolExecutor,
) -> Iterator[dg.MaterializeResult]:
    """Each call to the image manipulator is sent before the step stores what came before it:
    the resize while the photo is stored, the zoom check (right after the resize, on the same
    call thread) while the photo or the canvas is (its PNG, the largest blob of the step).
    Neither call has a latency knob; each waited for a store it does not need (~0.1 s of the
    step's ~0.45 s, issue 28)."""
    photo: tuple[bytes, str, float] | None = None  # the upload, its URI, the decode's seconds
    if step.makes(A.ORIGINAL_IMAGE):
        if config.original_image is None:
            raise _permanent("original_image needs its config: the image_uri of the uploaded photo")
        uri = config.original_image.image_uri
        data = _load_image_blob(blob_store, uri, "original image")
        try:
            image, seconds = _timed(lambda: imaging.decode_image(data))
        except ImageDecodeError as exc:
            raise _permanent(f"the uploaded file is not a usable image: {exc}") from exc
        step.keep(A.ORIGINAL_IMAGE, image)
        photo = (data, uri, seconds)
    resizing: Future[tuple[tuple[np.ndarray, CanvasTransform], float]] | None = None
    checking: Future[tuple[ZoomCheck, float]] | None = None
    if step.makes(A.RESIZED_IMAGE, A.CANVAS_TRANSFORM):
        original = step.get(A.ORIGINAL_IMAGE)
        stop_if_cancelled(context, "resizing to the canvas")
        resizing = calls.submit(_timed, lambda: image_manipulator.resize_to_canvas(original))
        if step.makes(A.ZOOM_CHECK):
            # Queued behind the resize on the one call thread, it is sent as soon as the canvas
            # is in, not once this thread has stored the photo and taken the canvas (issue 28).
            # A cancel meanwhile: a model service's client refuses to call for a cancelled run,
            # and the step materializes nothing more either way (StepValues.emit).
            resized_by = resizing
            checking = calls.submit(_timed, lambda: image_manipulator.check_zoom(resized_by.result()[0][0]))
    if photo is not None:
        data, uri, seconds = photo
        image = step.get(A.ORIGINAL_IMAGE)
        source = {"source_uri": uri, SOURCE_SHA256: sha256_hex(data), SOURCE_FORMAT: sniff_mime(data)}
        yield from step.emit(A.ORIGINAL_IMAGE, image, {**_image_metadata(image, seconds), **source})
    resized: tuple[np.ndarray, float] | None = None
    if resizing is not None:
        (canvas, transform), seconds = resizing.result()
        step.keep(A.RESIZED_IMAGE, canvas)
        step.keep(A.CANVAS_TRANSFORM, transform.to_dict())
        resized = (canvas, seconds)
    if checking is None and step.makes(A.ZOOM_CHECK):
        canvas = step.get(A.RESIZED_IMAGE)
        stop_if_cancelled(context, "the zoom check")
        checking = calls.submit(_timed, lambda: image_manipulator.check_zoom(canvas))
    if resized is not None:
        canvas, seconds = resized
        transform_dict = step.get(A.CANVAS_TRANSFORM)
        yield from step.emit(A.RESIZED_IMAGE, canvas, _image_metadata(canvas, seconds, image_manipulator.backend_name))
        yield from step.emit(A.CANVAS_TRANSFORM, transform_dict, transform_dict)
    if checking is not None:
        check, seconds = checking.result()
        meta = {**check.to_dict(), "seconds": seconds, "backend": image_manipulator.backend_name}
        yield from step.emit(A.ZOOM_CHECK, check.to_dict(), meta)


@dg.multi_asset(
    name=SEGMENT_OP,
    partitions_def=requests_partitions,
    group_name="preprocess",
    outs=_outs(
        {
            A.BACKGROUND_REMOVED_IMAGE: _out(
                "The canvas with its background removed, or passed through when it was not needed.",
                code_version=_versions.background_remover,
            ),
            A.JEWELRY_MASK: _out(
                "The jewelry under the clicked points (label 1 on it, 0 off it), on the canvas.",
                code_version=_versions.segmenter,
            ),
        }
    ),
    internal_asset_deps=_internal_deps(_SEGMENT_DEPS),
    deps=_external_deps(_SEGMENT_DEPS),
    can_subset=True,
    retry_policy=SERVICE_RETRY,
    pool=GPU_POOL,
)
def segment_jewelry(
    context: dg.AssetExecutionContext,
    io_manager: dg.ResourceParam[BlobIOManager],
    config: SegmentJewelryConfig,
    background_remover: BackgroundRemover,
    segmenter: Segmenter,
    blob_store: BlobStore,
) -> Iterator[dg.MaterializeResult]:
    """Background removal (when the zoom check or the request asks) and the jewelry mask."""
    step = StepValues(context, io_manager)
    calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segment-jewelry")
    try:
        prepared: tuple[np.ndarray, float, str | None, dict[str, Any]] | None = None
        if step.makes(A.BACKGROUND_REMOVED_IMAGE):
            mode = config.background_removed_image.mode
            zoom = step.get(A.ZOOM_CHECK)
            canvas = step.get(A.RESIZED_IMAGE)
            removed = mode == "remove" or (mode == "auto" and zoom["needs_background_removal"])
            backend: str | None = None
            if removed:
                stop_if_cancelled(context, "removing the background")
                image, seconds = _timed(lambda: background_remover.remove_background(canvas))
                backend = background_remover.backend_name
            else:
                image, seconds = canvas, 0.0
            step.keep(A.BACKGROUND_REMOVED_IMAGE, image)
            facts = {"background_removed": removed, "reason": f"mode={mode}; zoom score {zoom['score']}"}
            prepared = (image, seconds, backend, facts)
        # SAM3 is sent before the image it segments is stored (its PNG, its preview): that work
        # no longer waits on the critical path ahead of the call (issue 28).
        mask = (
            _jewelry_mask(context, config, step, segmenter, blob_store, calls) if step.makes(A.JEWELRY_MASK) else None
        )
        if prepared is not None:
            image, seconds, backend, facts = prepared
            meta = {**_image_metadata(image, seconds, backend), **facts}
            yield from step.emit(A.BACKGROUND_REMOVED_IMAGE, image, meta)
        if mask is not None:
            yield from step.emit(A.JEWELRY_MASK, *mask())
    finally:
        calls.shutdown(wait=False, cancel_futures=True)


def _jewelry_mask(
    context: dg.AssetExecutionContext,
    config: SegmentJewelryConfig,
    step: StepValues,
    segmenter: Segmenter,
    blob_store: BlobStore,
    calls: ThreadPoolExecutor,
) -> Callable[[], tuple[np.ndarray, dict[str, Any]]]:
    """The mask under the request's clicks (or the supplied one), with its metadata: the
    segmenter's call is sent now, on `calls`; what is returned waits for it (and raises what the
    call raised, or a refusal of the request)."""
    request = config.jewelry_mask
    transform = CanvasTransform.from_dict(step.get(A.CANVAS_TRANSFORM))
    if request.mask_uri:
        uri = request.mask_uri
        return lambda: _supplied_mask(uri, transform, blob_store)
    if not any(p.label == 1 for p in request.points):

        def refused() -> tuple[np.ndarray, dict[str, Any]]:
            raise _permanent("no point on the jewelry: give at least one mask point with label 1")

        return refused
    points = [PixelPoint(*transform.to_canvas(p.x, p.y), label=p.label) for p in request.points]
    image = step.get(A.BACKGROUND_REMOVED_IMAGE)
    stop_if_cancelled(context, "segmenting the jewelry")
    segmenting = calls.submit(_timed, lambda: segmenter.segment(image, points))

    def answered() -> tuple[np.ndarray, dict[str, Any]]:
        mask, seconds = segmenting.result()
        if not mask.any():
            raise _permanent("the segmenter found no jewelry under the points; click on the jewelry itself")
        meta = _image_metadata(mask, seconds, segmenter.backend_name)
        meta["points"] = len(points)
        # The clicks on the canvas: `flux_metrics` asks the segmenter for the jewelry at the same places.
        meta[CANVAS_POINTS] = dg.MetadataValue.json([[p.x, p.y, p.label] for p in points])
        return mask, meta

    return answered


def _supplied_mask(uri: str, transform: CanvasTransform, blob_store: BlobStore) -> tuple[np.ndarray, dict[str, Any]]:
    """A stored mask given by the caller, drawn on the original photo or already on the canvas."""
    try:
        mask = imaging.decode_mask(_load_image_blob(blob_store, uri, "mask"))
    except ImageDecodeError as exc:
        raise _permanent(f"the mask is not a usable image: {exc}") from exc
    h, w = mask.shape
    if (w, h) == (transform.source_width, transform.source_height):
        mask = imaging.apply_canvas_transform(mask, transform)
    elif (w, h) != (transform.canvas_width, transform.canvas_height):
        raise _permanent(
            f"the mask is {w}x{h}; it must match the image ({transform.source_width}x"
            f"{transform.source_height}) or the canvas ({transform.canvas_width}x{transform.canvas_height})"
        )
    if not mask.any():
        raise _permanent("the supplied mask is empty")
    meta = _image_metadata(mask, 0.0, "supplied")
    meta["source_uri"] = uri
    return mask, meta


def _load_strokes(uri: str | None, blob_store: BlobStore) -> list[BrushStroke]:
    """The request's brush strokes from their blob, checked by the gateway's own request type."""
    if not uri:
        return []
    data = _load_image_blob(blob_store, uri, "brush strokes")
    try:
        return BRUSH_STROKES.validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise _permanent(f"the brush strokes at {uri} are not valid: {where}: {first['msg']}") from None


# A mask made and kept, its materialization owed: name, mask, seconds, backend, metadata besides
# `_image_metadata`'s (whose preview is made when the mask is stored, after the generators are sent).
_Owed = list[tuple[AssetName, np.ndarray, float, str | None, dict[str, Any]]]


def _masks(
    context: dg.AssetExecutionContext,
    config: GenerateImagesConfig,
    step: StepValues,
    mask_refiner: MaskRefiner,
    blob_store: BlobStore,
) -> tuple[_Owed, dg.Failure | None]:
    """The brush strokes applied, then the specks removed: the mask the generators get. Both are
    made and kept now; what is returned are their materializations owed, in order, which the
    step stores once the generators are sent (`_emit_owed`), and the refusal of a final mask
    left empty: raised once the refined mask is stored (it shows what the strokes did, and the
    request fails at UPLOADING_MASK, where it stopped)."""
    owed: _Owed = []
    if step.makes(A.REFINED_MASK):
        request = config.refined_mask
        transform = CanvasTransform.from_dict(step.get(A.CANVAS_TRANSFORM))
        if request.points_space == "canvas":  # normalised on the canvas itself: no photo placement
            transform = CanvasTransform.identity(transform.canvas_width, transform.canvas_height)
        strokes = [
            imaging.stroke_to_canvas(((p.x, p.y) for p in s.points), s.mode, s.size, transform)
            for s in _load_strokes(request.strokes_uri, blob_store)
        ]
        jewelry = step.get(A.JEWELRY_MASK)
        cpu_before = time.process_time()
        if strokes:
            stop_if_cancelled(context, "refining the mask")
            mask, seconds = _timed(lambda: mask_refiner.refine(jewelry, strokes))
            backend: str | None = mask_refiner.backend_name
            meta: dict[str, Any] = {}
        else:
            # The refiner applies strokes and nothing else (docs/service-contracts.md): without
            # any, its answer is the mask it was sent. So no call (the A100's was ~0.06 s on the
            # critical path of every request without strokes, issue 28), and no `backend`, as for
            # a background kept as it was: no service made this mask.
            mask, seconds, backend = jewelry, 0.0, None
            meta = {"reason": "no strokes: the jewelry mask as it is"}
        # What the strokes cost, whatever else the machine is doing: wall time grows with load, CPU time
        # is the bill a request's strokes run up (bounded by the stroke limits of request_inputs).
        meta["cpu_seconds"] = round(time.process_time() - cpu_before, 3)
        meta["strokes"] = len(strokes)
        if request.strokes_uri:
            meta["strokes_uri"] = request.strokes_uri
            meta["points_space"] = request.points_space
        meta["changed_pixels"] = int(np.count_nonzero(mask != jewelry))
        step.keep(A.REFINED_MASK, mask)
        owed.append((A.REFINED_MASK, mask, seconds, backend, meta))
    if step.makes(A.FINAL_MASK):
        refined = step.get(A.REFINED_MASK)
        mask, seconds = _timed(lambda: imaging.remove_specks(refined, SPECK_AREA))
        if not mask.any():
            refused = "the refined mask is empty: nothing would be kept; add jewelry back with an 'add' stroke"
            return owed, _permanent(refused)
        step.keep(A.FINAL_MASK, mask)
        owed.append((A.FINAL_MASK, mask, seconds, None, {}))
    return owed, None


def _emit_owed(step: StepValues, owed: _Owed) -> Iterator[dg.MaterializeResult]:
    """The masks' materializations, in order, each blob stored first (`StepValues.emit`); `owed`
    is emptied, so a second call emits nothing."""
    for name, mask, seconds, backend, meta in owed:
        yield from step.emit(name, mask, {**_image_metadata(mask, seconds, backend), **meta})
    owed.clear()


@dg.multi_asset(
    name=GENERATE_OP,
    partitions_def=requests_partitions,
    group_name="generate",
    outs=_outs(
        {
            A.REFINED_MASK: _out(
                "The jewelry mask with the person's brush strokes applied (add / remove).",
                code_version=_versions.mask_refiner,
            ),
            A.FINAL_MASK: _out("The mask handed to the generators: the refined mask without stray specks."),
            A.FLUX_GENERATION: _out("Flux image that keeps the jewelry pixels.", code_version=_versions.flux),
            A.GEMINI_GENERATION: _out(
                "Gemini image that keeps the jewelry pixels; not materialized when Gemini is absent or refuses "
                f"(flux_generation's `{GEMINI_REASON}` says why).",
                code_version=_versions.gemini,
            ),
            A.FLUX_METRICS: _out(
                "How well the Flux image kept the jewelry: precision, recall, IoU, growth ratio.",
                image=False,
                code_version=f"metrics-1|{_versions.segmenter}",
            ),
        }
    ),
    internal_asset_deps=_internal_deps(_GENERATE_DEPS),
    deps=_external_deps(_GENERATE_DEPS),
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset=str(A.FLUX_METRICS),
            description="The Flux image kept the jewelry: metrics within the configured thresholds.",
            # Partitioned like its asset, so each request's result is recorded (and shown) apart.
            partitions_def=requests_partitions,
        )
    ],
    can_subset=True,
    retry_policy=SERVICE_RETRY,
    pool=GPU_POOL,
)
def generate_images(
    context: dg.AssetExecutionContext,
    io_manager: dg.ResourceParam[BlobIOManager],
    config: GenerateImagesConfig,
    mask_refiner: MaskRefiner,
    flux_generator: ImageGenerator,
    gemini_generator: ImageGenerator,
    segmenter: Segmenter,
    fidelity: FidelityThresholds,
    provenance: ImageProvenance,
    blob_store: BlobStore,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The final mask (brush strokes, then specks removed), then Flux and Gemini at the same time
    (the request waits for the slower, not the sum), then the fidelity of the Flux image, whose
    SAM3 call starts as soon as Flux answers. The masks are stored while the generators work."""
    step = StepValues(context, io_manager)
    measuring = step.makes(A.FLUX_METRICS) or step.check_selected(CHECK_NAME)
    measure = _MetricsCall(context, step, segmenter) if measuring else None
    try:
        owed, refused = _masks(context, config, step, mask_refiner, blob_store)
        if refused is not None:
            yield from _emit_owed(step, owed)
            raise refused
        if step.makes(A.FLUX_GENERATION, A.GEMINI_GENERATION):
            signed = _Signing(context, io_manager, provenance, blob_store)
            yield from _generations(context, config, step, flux_generator, gemini_generator, signed, measure, owed)
        yield from _emit_owed(step, owed)  # a run without the generations: nothing to send first
        if measure is not None:
            yield from _flux_metrics(context, step, measure, segmenter.backend_name, fidelity)
    finally:
        if measure is not None:
            measure.close()


def _generations(
    context: dg.AssetExecutionContext,
    config: GenerateImagesConfig,
    step: StepValues,
    flux_generator: ImageGenerator,
    gemini_generator: ImageGenerator,
    signed: "_Signing",
    measure: "_MetricsCall | None" = None,
    owed: _Owed | None = None,
) -> Iterator[dg.MaterializeResult]:
    """Both generations, stored and signed. The masks `owed` are stored once both calls are sent:
    their PNGs no longer wait on the critical path ahead of the calls (issue 28), and each is
    still stored before its materialization is reported, in order, before the generations'.
    `measure` (the metrics' SAM3 call) finds its points while the generators work and is
    started as soon as the Flux image is in, while Gemini may still be generating and before
    any image is encoded."""
    image, mask = step.get(A.BACKGROUND_REMOVED_IMAGE), step.get(A.FINAL_MASK)
    wanted = [
        (name, generator)
        for name, generator in ((A.FLUX_GENERATION, flux_generator), (A.GEMINI_GENERATION, gemini_generator))
        if step.makes(name)
    ]
    request = config.generations

    def prepare(generator: ImageGenerator) -> tuple[Callable[[], Generation], float]:
        return _timed(lambda: generator.prepare(image, mask, request.seed, request.prompt))

    def run(call: Callable[[], Generation], prepared_seconds: float) -> tuple[Generation, float]:
        generation, seconds = _timed(call)
        return generation, round(prepared_seconds + seconds, 3)

    stop_if_cancelled(context, "generating the images")
    # Each call is prepared (Flux's request encoded) before any is started: Flux's encode then
    # no longer shares the cores with Gemini's thread and the masks' stores (issue 28).
    prepared = {name: prepare(generator) for name, generator in wanted}
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="generator")
    try:
        futures = {name: pool.submit(run, *prepared[name]) for name, _ in wanted}
        pending = set(futures.values())
        if owed:
            yield from _emit_owed(step, owed)
        flux_future = futures.get(A.FLUX_GENERATION)
        if flux_future is None:
            measure = None
        if measure is not None:
            measure.points()  # read and computed while the generators work
        while pending:
            # A cancel ends the step while the calls are in flight: their answers are dropped.
            _, pending = wait(pending, timeout=CANCEL_POLL_SECONDS, return_when=FIRST_COMPLETED)
            stop_if_cancelled(context, "materializing the generated images")
            if measure is not None and flux_future is not None and flux_future.done():
                flux_image = None if flux_future.exception() else flux_future.result()[0].image
                if flux_image is not None:
                    measure.start(flux_image)
                measure = None
        results = {name: future.result() for name, future in futures.items()}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    gemini_note: dict[str, Any] = {}
    if A.GEMINI_GENERATION in results:
        gemini, seconds = results[A.GEMINI_GENERATION]
        if gemini.image is None:
            # Not materialized: a null stored as the asset would show in the UI as a materialized
            # image. The reason stays in the log and on the Flux image's metadata.
            gemini_note = {GEMINI_REASON: gemini.reason or "no image", "gemini_model": gemini.model}
            context.log.warning(f"gemini_generation not materialized: {gemini.model}: {gemini.reason}")
    if A.FLUX_GENERATION in results:
        flux, seconds = results[A.FLUX_GENERATION]
        if flux.image is None:
            raise _permanent(f"Flux returned no image: {flux.reason}")
        meta = {**_image_metadata(flux.image, seconds, flux.model), **gemini_note}
        yield from step.emit(A.FLUX_GENERATION, signed.encode("flux", flux.model, flux.image), meta)
        step.keep(A.FLUX_GENERATION, flux.image)  # the metrics below read the pixels
    if A.GEMINI_GENERATION in results and not gemini_note:
        gemini, seconds = results[A.GEMINI_GENERATION]
        assert gemini.image is not None
        encoded = signed.encode("gemini", gemini.model, gemini.image)
        yield from step.emit(A.GEMINI_GENERATION, encoded, _image_metadata(gemini.image, seconds, gemini.model))
        step.keep(A.GEMINI_GENERATION, gemini.image)


class _Signing:
    """Encodes a generated image (its stored PNG and the JPEG the API answers) and signs both
    with the request's facts: the generator, the workflow, the time, the input photo's hash."""

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        io_manager: BlobIOManager,
        provenance: ImageProvenance,
        blob_store: BlobStore,
    ) -> None:
        self._context, self._io, self._provenance, self._store = context, io_manager, provenance, blob_store
        self._input: tuple[str | None, str] | None = None

    def _input_photo(self) -> tuple[str | None, str]:
        """The photo's SHA-256 and type from original_image's metadata (or its blob, for one
        materialized before they were recorded); (None, ...) when neither can be read."""
        if self._input is None:
            context = self._context
            record = upstream_materialization(context.instance, context.run, A.ORIGINAL_IMAGE, context.partition_key)
            meta = record.metadata if record else {}

            def text(key: str) -> str | None:
                entry = meta.get(key)
                return entry.text if isinstance(entry, dg.TextMetadataValue) else None

            digest, fmt, uri = text(SOURCE_SHA256), text(SOURCE_FORMAT), text("source_uri")
            if digest and fmt:
                self._input = (digest, fmt)
            else:
                try:
                    data = self._store.get(uri) if uri else None
                except BlobStoreError as exc:
                    context.log.warning(f"the input photo cannot be named in the manifest: {exc}")
                    data = None
                self._input = (sha256_hex(data), sniff_mime(data)) if data else (None, "application/octet-stream")
        return self._input

    def encode(self, generator: str, backend: str, image: np.ndarray) -> EncodedImage:
        png = imaging.encode_stored_png(image, self._io.png_filter)
        jpeg = imaging.encode_jpeg(image)
        if not self._provenance.enabled:
            return EncodedImage(image, png, jpeg)
        digest, fmt = self._input_photo()
        facts = GenerationFacts(
            generator=generator,
            backend=public_backend(backend),
            workflow_id=self._context.partition_key,
            created_at=datetime.now(UTC),
            input_sha256=digest,
            input_format=fmt,
        )
        return EncodedImage(
            image, self._provenance.sign(png, "image/png", facts), self._provenance.sign(jpeg, "image/jpeg", facts)
        )


class _MetricsCall:
    """The segmenter's call on the Flux image that `flux_metrics` measures with.

    Started on a thread as soon as Flux answers (`start`), it runs while the step encodes, signs
    and stores the generated images, and while Gemini is still generating when Gemini is the
    slower: SAM3's latency follows Flux's directly instead of after that work. When this run
    did not make the Flux image (a subset run), `result` makes the call itself. Either way the
    call, its points and its failures are those of the direct call.
    """

    def __init__(self, context: dg.AssetExecutionContext, step: StepValues, segmenter: Segmenter) -> None:
        self._context, self._step, self._segmenter = context, step, segmenter
        self._points: list[PixelPoint] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future[tuple[np.ndarray, float]] | None = None
        self._flux_image: np.ndarray | None = None

    def points(self) -> list[PixelPoint]:
        if self._points is None:
            self._points = _metrics_points(self._context, self._step.get(A.FINAL_MASK))
        return self._points

    def _call(self, flux_image: np.ndarray, points: list[PixelPoint]) -> tuple[np.ndarray, float]:
        return _timed(lambda: self._segmenter.segment(flux_image, points))

    def start(self, flux_image: np.ndarray) -> None:
        """Send the call now, on a thread of its own."""
        points = self.points()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flux-metrics")
        self._future = self._pool.submit(self._call, flux_image, points)

    def wait(self) -> None:
        """Until the call can be answered: the started call answered, or the Flux image loaded
        for the direct call. Raises when the run was cancelled meanwhile (not a metrics failure)."""
        if self._future is None:
            self._flux_image = self._step.get(A.FLUX_GENERATION)
        else:
            pending = {self._future}
            while pending:  # a cancel ends the step while the call is in flight
                _, pending = wait(pending, timeout=CANCEL_POLL_SECONDS)
                stop_if_cancelled(self._context, "measuring the Flux image")
        stop_if_cancelled(self._context, "measuring the Flux image")

    def result(self) -> tuple[np.ndarray, float]:
        """The mask the segmenter found in the Flux image and the call's seconds (after `wait`);
        raises what the call raised."""
        if self._future is None:
            assert self._flux_image is not None, "wait() loads the Flux image first"
            return self._call(self._flux_image, self.points())
        return self._future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _flux_metrics(
    context: dg.AssetExecutionContext,
    step: StepValues,
    measure: _MetricsCall,
    backend: str,
    fidelity: FidelityThresholds,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """How well the Flux image kept the jewelry: precision, recall, IoU, growth ratio.

    The segmenter is asked, with the same call that made the jewelry mask (mask from points),
    for the object under the request's positive clicks in the Flux image (`_MetricsCall`). When
    that fails the images still stand: flux_metrics is not materialized, and the check fails
    saying why.
    """
    final_mask = step.get(A.FINAL_MASK)
    points = measure.points()
    measure.wait()
    try:
        found, seconds = measure.result()
        metrics = imaging.mask_metrics(found, final_mask).to_dict()
    except TransientServiceError:
        if context.retry_number < SERVICE_RETRY.max_retries:
            raise  # retried by the step's RetryPolicy
        reason = _metrics_failure(sys.exc_info()[1])
    except Exception as exc:  # noqa: BLE001 - a metrics failure must never fail a finished generation
        reason = _metrics_failure(exc)
    else:
        rounded = {k: round(v, 4) for k, v in metrics.items()}
        meta = {**rounded, "seconds": seconds, "backend": backend, "points": len(points)}
        yield from step.emit(A.FLUX_METRICS, rounded, meta)
        if step.check_selected(CHECK_NAME):
            violations = fidelity.violations(rounded)
            yield dg.AssetCheckResult(
                check_name=CHECK_NAME,
                passed=not violations,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={**rounded, "violations": "; ".join(violations) or "none"},
            )
        return
    # Not materialized (a null stored as the asset would show as measured); the check carries
    # the reason: failed, at warning severity, since nobody could vouch for the image.
    context.log.warning(f"fidelity metrics unavailable: {reason}")
    if step.check_selected(CHECK_NAME):
        yield dg.AssetCheckResult(
            check_name=CHECK_NAME,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"not measured: {reason}",
            metadata={
                "violations": f"metrics unavailable: {reason}",
                "reason": reason,
                "backend": backend,
                "points": len(points),
            },
        )


def _metrics_failure(exc: BaseException | None) -> str:
    message = exc.description if isinstance(exc, dg.Failure) and exc.description else str(exc)
    return f"the segmenter could not measure the Flux image: {message}"


def _metrics_points(context: dg.AssetExecutionContext, final_mask: np.ndarray) -> list[PixelPoint]:
    """Where the jewelry must still be in the Flux image: the request's positive clicks (from
    the jewelry mask's metadata: the materialization this run's lineage reads, else the newest)
    that lie in the final mask, points spread over the final mask, and a point deep inside each
    part no click is on (jewelry painted in with strokes, a supplied mask): all places where the
    jewelry must still be."""
    recorded: list[Any] = []
    try:
        materialization = upstream_materialization(context.instance, context.run, A.JEWELRY_MASK, context.partition_key)
        entry = materialization.metadata.get(CANVAS_POINTS) if materialization else None
        recorded = list(entry.value) if entry is not None and isinstance(entry.value, list) else []
    except Exception as exc:  # noqa: BLE001 - the fallback below needs nothing but the mask
        context.log.warning(f"could not read the request's clicks: {exc}")
    h, w = final_mask.shape
    clicks = [
        PixelPoint(float(x), float(y), 1)
        for x, y, label in recorded
        if label == 1 and 0 <= x < w and 0 <= y < h and final_mask[int(y), int(x)]
    ]
    covered = [(p.x, p.y) for p in clicks]
    extra = imaging.spread_points(final_mask) + imaging.interior_points(final_mask, covered=covered)
    return clicks + [PixelPoint(x, y, 1) for x, y in extra]


PREPROCESS_ASSETS = [prepare_canvas, segment_jewelry]
GENERATE_ASSETS = [generate_images]
ALL_ASSETS = [*PREPROCESS_ASSETS, *GENERATE_ASSETS]
