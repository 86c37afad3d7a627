"""The per-request asset graph: one partition of `requests` per shopper's photo."""
# No `from __future__ import annotations` here: Dagster reads these annotations at run time.

import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import dagster as dg
import numpy as np
from pydantic import ValidationError

from jewel_dagster.contract import CHECK_NAME, GPU_POOL, PARTITIONS_NAME
from jewel_dagster.defs.config import (
    BRUSH_STROKES,
    BackgroundConfig,
    BrushStroke,
    GenerationConfig,
    JewelryMaskConfig,
    OriginalImageConfig,
    RefineConfig,
)
from jewel_dagster.resources.blob_store import BlobStore, BlobStoreError
from jewel_dagster.resources.fidelity import FidelityThresholds
from jewel_dagster.resources.http_services import TransientServiceError
from jewel_dagster.resources.services import (
    BackgroundRemover,
    Generation,
    ImageGenerator,
    ImageManipulator,
    MaskRefiner,
    Segmenter,
)
from jewel_dagster.resources.versions import code_versions
from jewel_dagster.settings import PipelineSettings, get_settings
from jewel_dagster.vision import imaging
from jewel_dagster.vision.classical import PixelPoint
from jewel_dagster.vision.imaging import CanvasTransform, ImageDecodeError

requests_partitions = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)

# Transient service failures (timeouts, 5xx) are retried as step retries; permanent ones
# raise dg.Failure(allow_retries=False) and fail at once.
SERVICE_RETRY = dg.RetryPolicy(max_retries=3, delay=0.5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
# Code versions name the algorithm or model behind an asset: changing one marks earlier
# partitions stale, and the regeneration sensor picks them up.
_settings = get_settings()
_versions = code_versions(_settings)
SPECK_AREA = 64  # mask components smaller than this (canvas pixels) are noise, not jewelry
CANVAS_POINTS = "canvas_points"  # jewelry_mask metadata: the request's clicks in canvas pixels

T = TypeVar("T")


def _gpu_image_step(group_name: str, code_version: str, pool: str | None = GPU_POOL) -> Any:
    """An image asset made by a model service: retried on transient failures, in the `gpu` pool."""
    return dg.asset(
        partitions_def=requests_partitions,
        group_name=group_name,
        kinds={"image"},
        retry_policy=SERVICE_RETRY,
        pool=pool,
        code_version=code_version,
    )


def refiner_pool(settings: PipelineSettings) -> str | None:
    """The `gpu` pool only when the A100 server refines the mask: the local rasteriser is CPU
    work, and holding a GPU slot for it would queue other requests' GPU steps behind it."""
    return GPU_POOL if settings.a100_server_url else None


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


@dg.asset(partitions_def=requests_partitions, group_name="preprocess", kinds={"image"})
def original_image(config: OriginalImageConfig, blob_store: BlobStore) -> dg.Output[np.ndarray]:
    """The shopper's photo, decoded to RGB with its EXIF orientation applied."""
    data = _load_image_blob(blob_store, config.image_uri, "original image")
    try:
        image, seconds = _timed(lambda: imaging.decode_image(data))
    except ImageDecodeError as exc:
        raise _permanent(f"the uploaded file is not a usable image: {exc}") from exc
    meta = _image_metadata(image, seconds)
    meta["source_uri"] = config.image_uri
    return dg.Output(image, metadata=meta)


@dg.multi_asset(
    partitions_def=requests_partitions,
    group_name="preprocess",
    outs={
        "resized_image": dg.AssetOut(description="The photo on the 2000x2667 canvas, undistorted.", kinds={"image"}),
        "canvas_transform": dg.AssetOut(description="Scale and offset that placed the photo on the canvas."),
    },
    retry_policy=SERVICE_RETRY,
)
def resize_to_canvas(original_image: np.ndarray, image_manipulator: ImageManipulator) -> Iterator[dg.Output[Any]]:
    (canvas, transform), seconds = _timed(lambda: image_manipulator.resize_to_canvas(original_image))
    yield dg.Output(
        canvas, output_name="resized_image", metadata=_image_metadata(canvas, seconds, image_manipulator.backend_name)
    )
    yield dg.Output(transform.to_dict(), output_name="canvas_transform", metadata=transform.to_dict())


@dg.asset(partitions_def=requests_partitions, group_name="preprocess", retry_policy=SERVICE_RETRY)
def zoom_check(resized_image: np.ndarray, image_manipulator: ImageManipulator) -> dg.Output[dict[str, Any]]:
    """Whether the background must be removed before segmenting, with the deciding score."""
    check, seconds = _timed(lambda: image_manipulator.check_zoom(resized_image))
    return dg.Output(
        check.to_dict(), metadata={**check.to_dict(), "seconds": seconds, "backend": image_manipulator.backend_name}
    )


@_gpu_image_step("preprocess", _versions.background_remover)
def background_removed_image(
    config: BackgroundConfig,
    resized_image: np.ndarray,
    zoom_check: dict[str, Any],
    background_remover: BackgroundRemover,
) -> dg.Output[np.ndarray]:
    """The canvas with its background removed, or passed through when it was not needed."""
    remove = config.mode == "remove" or (config.mode == "auto" and zoom_check["needs_background_removal"])
    if not remove:
        meta = _image_metadata(resized_image, 0.0)
        meta.update(background_removed=False, reason=f"mode={config.mode}; zoom score {zoom_check['score']}")
        return dg.Output(resized_image, metadata=meta)
    image, seconds = _timed(lambda: background_remover.remove_background(resized_image))
    meta = _image_metadata(image, seconds, background_remover.backend_name)
    meta.update(background_removed=True, reason=f"mode={config.mode}; zoom score {zoom_check['score']}")
    return dg.Output(image, metadata=meta)


@_gpu_image_step("preprocess", _versions.segmenter)
def jewelry_mask(
    config: JewelryMaskConfig,
    background_removed_image: np.ndarray,
    canvas_transform: dict[str, int],
    segmenter: Segmenter,
    blob_store: BlobStore,
) -> dg.Output[np.ndarray]:
    """The jewelry under the clicked points (label 1 on it, 0 off it), on the canvas."""
    transform = CanvasTransform.from_dict(canvas_transform)
    if config.mask_uri:
        mask, meta = _supplied_mask(config.mask_uri, transform, blob_store)
        return dg.Output(mask, metadata=meta)
    if not any(p.label == 1 for p in config.points):
        raise _permanent("no point on the jewelry: give at least one mask point with label 1")
    points = [PixelPoint(*transform.to_canvas(p.x, p.y), label=p.label) for p in config.points]
    mask, seconds = _timed(lambda: segmenter.segment(background_removed_image, points))
    if not mask.any():
        raise _permanent("the segmenter found no jewelry under the points; click on the jewelry itself")
    meta = _image_metadata(mask, seconds, segmenter.backend_name)
    meta["points"] = len(points)
    # The clicks on the canvas: `flux_metrics` asks the segmenter for the jewelry at the same places.
    meta[CANVAS_POINTS] = dg.MetadataValue.json([[p.x, p.y, p.label] for p in points])
    return dg.Output(mask, metadata=meta)


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


@_gpu_image_step("generate", _versions.mask_refiner, refiner_pool(_settings))
def refined_mask(
    config: RefineConfig,
    jewelry_mask: np.ndarray,
    canvas_transform: dict[str, int],
    mask_refiner: MaskRefiner,
    blob_store: BlobStore,
) -> dg.Output[np.ndarray]:
    """The jewelry mask with the person's brush strokes applied (add / remove)."""
    transform = CanvasTransform.from_dict(canvas_transform)
    if config.points_space == "canvas":  # normalised on the canvas itself: no photo placement
        transform = CanvasTransform.identity(transform.canvas_width, transform.canvas_height)
    strokes = [
        imaging.stroke_to_canvas(((p.x, p.y) for p in s.points), s.mode, s.size, transform)
        for s in _load_strokes(config.strokes_uri, blob_store)
    ]
    cpu_before = time.process_time()
    mask, seconds = _timed(lambda: mask_refiner.refine(jewelry_mask, strokes))
    meta = _image_metadata(mask, seconds, mask_refiner.backend_name)
    # What the strokes cost, whatever else the machine is doing: wall time grows with load, CPU time
    # is the bill a request's strokes run up (bounded by the stroke limits of defs/config.py).
    meta["cpu_seconds"] = round(time.process_time() - cpu_before, 3)
    meta["strokes"] = len(strokes)
    if config.strokes_uri:
        meta["strokes_uri"] = config.strokes_uri
        meta["points_space"] = config.points_space
    meta["changed_pixels"] = int(np.count_nonzero(mask != jewelry_mask))
    return dg.Output(mask, metadata=meta)


@dg.asset(partitions_def=requests_partitions, group_name="generate", kinds={"image"})
def final_mask(refined_mask: np.ndarray) -> dg.Output[np.ndarray]:
    """The mask handed to the generators: the refined mask without stray specks."""
    mask, seconds = _timed(lambda: imaging.remove_specks(refined_mask, SPECK_AREA))
    if not mask.any():
        raise _permanent("the refined mask is empty: nothing would be kept; add jewelry back with an 'add' stroke")
    return dg.Output(mask, metadata=_image_metadata(mask, seconds))


def _generation_output(name: str, generation: Generation, seconds: float) -> dg.Output[Any]:
    if generation.image is None:
        return dg.Output(
            None,
            output_name=name,
            metadata={"model": generation.model, "reason": generation.reason or "", "seconds": seconds},
        )
    meta = _image_metadata(generation.image, seconds, generation.model)
    return dg.Output(generation.image, output_name=name, metadata=meta)


@dg.multi_asset(
    partitions_def=requests_partitions,
    group_name="generate",
    outs={
        "flux_generation": dg.AssetOut(
            description="Flux image that keeps the jewelry pixels.", kinds={"image"}, code_version=_versions.flux
        ),
        "gemini_generation": dg.AssetOut(
            description="Gemini image that keeps the jewelry pixels, or null when Gemini is absent or refuses.",
            kinds={"image"},
            code_version=_versions.gemini,
        ),
    },
    retry_policy=SERVICE_RETRY,
    pool=GPU_POOL,
)
def generations(
    config: GenerationConfig,
    background_removed_image: np.ndarray,
    final_mask: np.ndarray,
    flux_generator: ImageGenerator,
    gemini_generator: ImageGenerator,
) -> Iterator[dg.Output[Any]]:
    """Flux and Gemini run at the same time: the request waits for the slower, not the sum."""

    def run(generator: ImageGenerator) -> tuple[Generation, float]:
        return _timed(lambda: generator.generate(background_removed_image, final_mask, config.seed, config.prompt))

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="generator") as pool:
        flux = pool.submit(run, flux_generator)
        gemini = pool.submit(run, gemini_generator)
        flux_result, flux_seconds = flux.result()
        gemini_result, gemini_seconds = gemini.result()
    if flux_result.image is None:
        raise _permanent(f"Flux returned no image: {flux_result.reason}")
    yield _generation_output("flux_generation", flux_result, flux_seconds)
    yield _generation_output("gemini_generation", gemini_result, gemini_seconds)


@dg.asset(
    partitions_def=requests_partitions,
    group_name="generate",
    retry_policy=SERVICE_RETRY,
    pool=GPU_POOL,
    code_version=f"metrics-1|{_versions.segmenter}",
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset="flux_metrics",
            description="The Flux image kept the jewelry: metrics within the configured thresholds.",
            # Partitioned like its asset, so each request's result is recorded (and shown) apart.
            partitions_def=requests_partitions,
        )
    ],
)
def flux_metrics(
    context: dg.AssetExecutionContext,
    flux_generation: np.ndarray,
    final_mask: np.ndarray,
    segmenter: Segmenter,
    fidelity: FidelityThresholds,
) -> Iterator[dg.Output[dict[str, float] | None] | dg.AssetCheckResult]:
    """How well the Flux image kept the jewelry: precision, recall, IoU, growth ratio.

    The segmenter is asked, with the same call that made the jewelry mask (mask from points),
    for the object under the request's positive clicks in the Flux image. When that fails the
    images still stand: the metrics are null with the reason, and the check fails saying why.
    """
    points = _metrics_points(context, final_mask)
    try:
        found, seconds = _timed(lambda: segmenter.segment(flux_generation, points))
        metrics = imaging.mask_metrics(found, final_mask).to_dict()
    except TransientServiceError:
        if context.retry_number < SERVICE_RETRY.max_retries:
            raise  # retried by the step's RetryPolicy
        reason = _metrics_failure(sys.exc_info()[1])
    except Exception as exc:  # noqa: BLE001 - a metrics failure must never fail a finished generation
        reason = _metrics_failure(exc)
    else:
        rounded = {k: round(v, 4) for k, v in metrics.items()}
        yield dg.Output(
            rounded,
            metadata={**rounded, "seconds": seconds, "backend": segmenter.backend_name, "points": len(points)},
        )
        violations = fidelity.violations(rounded)
        yield dg.AssetCheckResult(
            check_name=CHECK_NAME,
            passed=not violations,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={**rounded, "violations": "; ".join(violations) or "none"},
        )
        return
    context.log.warning(f"fidelity metrics unavailable: {reason}")
    yield dg.Output(None, metadata={"reason": reason, "backend": segmenter.backend_name, "points": len(points)})
    # Failed, at warning severity, saying why: nobody could vouch for the image. (A check that
    # is not yielded reads SKIPPED, but it cannot carry the reason.)
    yield dg.AssetCheckResult(
        check_name=CHECK_NAME,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"not measured: {reason}",
        metadata={"violations": f"metrics unavailable: {reason}", "reason": reason},
    )


def _metrics_failure(exc: BaseException | None) -> str:
    message = exc.description if isinstance(exc, dg.Failure) and exc.description else str(exc)
    return f"the segmenter could not measure the Flux image: {message}"


def _metrics_points(context: dg.AssetExecutionContext, final_mask: np.ndarray) -> list[PixelPoint]:
    """Where the jewelry must still be in the Flux image: the request's positive clicks (from
    the jewelry mask's metadata) that lie in the final mask, points spread over the final mask,
    and a point deep inside each part no click is on (jewelry painted in with strokes, a
    supplied mask): all places where the jewelry must still be."""
    recorded: list[Any] = []
    try:
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("jewelry_mask"), asset_partitions=[context.partition_key]),
            limit=1,
        ).records
        materialization = records[0].asset_materialization if records else None
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


PREPROCESS_ASSETS = [original_image, resize_to_canvas, zoom_check, background_removed_image, jewelry_mask]
GENERATE_ASSETS = [refined_mask, final_mask, generations, flux_metrics]
ALL_ASSETS = [*PREPROCESS_ASSETS, *GENERATE_ASSETS]
