"""Pure image functions: decoding, the canvas transform, brush strokes and mask metrics.

Nothing here imports Dagster or an HTTP library, so every function can be tested and
benchmarked alone; the assets and the service backends compose them.

Coordinates: an image of width W spans the continuous range [0, W); pixel i covers
[i, i + 1) and its centre is i + 0.5. A normalised point (x, y) in [0, 1] therefore sits at
(x * W, y * H) in continuous coordinates of the image it was clicked on.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

CANVAS_WIDTH = 2000
CANVAS_HEIGHT = 2667
DEFAULT_MAX_PIXELS = 50_000_000

RGBImage = np.ndarray  # (H, W, 3) uint8
Mask = np.ndarray  # (H, W) bool


class ImageDecodeError(ValueError):
    """The bytes are not an image we can read (or are larger than the pixel limit)."""


# --------------------------------------------------------------------------- codecs


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> RGBImage:
    """Decode an upload to RGB with its EXIF orientation applied.

    Phone photos are stored sideways with an orientation tag; the click points were given on
    the image as the browser showed it, i.e. after the rotation, so we must rotate too.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise ImageDecodeError(f"image is {img.width}x{img.height} pixels; the limit is {max_pixels} pixels")
            img.draft("RGB", (img.width, img.height))
            oriented = ImageOps.exif_transpose(img)
            if oriented.mode in ("RGBA", "LA", "PA") or (oriented.mode == "P" and "transparency" in oriented.info):
                # Transparent pixels become white, as a browser shows them on a white page.
                rgba = oriented.convert("RGBA")
                flat = Image.new("RGB", rgba.size, (255, 255, 255))
                flat.paste(rgba, mask=rgba.getchannel("A"))
                oriented = flat
            return np.asarray(oriented.convert("RGB")).copy()
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"not a readable image: {exc}") from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - subclass of Exception
        raise ImageDecodeError(str(exc)) from exc


# PNG row filters: libpng's adaptive choice (tries five filters per row) costs ~2.5x the time of
# a fixed "up" filter on a canvas, for ~5 % smaller files (benchmarks.image_kernels).
PngFilter = Literal["adaptive", "up", "sub", "none"]
_PNG_FILTERS = {"up": cv2.IMWRITE_PNG_FILTER_UP, "sub": cv2.IMWRITE_PNG_FILTER_SUB, "none": cv2.IMWRITE_PNG_FILTER_NONE}


# zlib's run-length strategy at level 1 after the row filter: filtered photo rows are mostly
# short runs of small differences, which level 1's default (lazy string matching) searches for
# matches it rarely finds. On a noisy 2000x2667 photo canvas RLE was both faster and ~20 % smaller
# (benchmarks.image_kernels, "stored PNG"); on a smooth one about as fast and ~7 % smaller.
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


def encode_png(array: np.ndarray, png_filter: PngFilter = "up") -> bytes:
    """Lossless encoding; fast compression and one fixed row filter, because these PNGs are
    intermediate artifacts and wire payloads, read by machines."""
    pixels: np.ndarray
    if array.dtype == bool:
        pixels = array.astype(np.uint8) * 255
    elif array.ndim == 3:
        pixels = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    else:
        pixels = array
    params = list(_PNG_PARAMS)
    if png_filter != "adaptive":
        params += [cv2.IMWRITE_PNG_FILTER, _PNG_FILTERS[png_filter]]
    ok, buf = cv2.imencode(".png", pixels, params)
    if not ok:  # pragma: no cover - cv2 only fails on unsupported dtypes
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_png`: one channel comes back as a bool mask, three as RGB."""
    buf = np.frombuffer(data, dtype=np.uint8)
    pixels = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageDecodeError("not a readable PNG")
    if pixels.ndim == 2:
        return pixels > 127
    if pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def decode_mask(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Mask:
    """A mask from any image: white (or any bright value, or opaque alpha) is jewelry."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise ImageDecodeError(f"mask is larger than {max_pixels} pixels")
            if img.mode in ("RGBA", "LA"):
                return np.asarray(img.getchannel("A")) > 127
            return np.asarray(img.convert("L")) > 127
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"not a readable mask image: {exc}") from exc


def encode_jpeg(image: RGBImage, quality: int = 92, optimize: bool = False) -> bytes:
    """`optimize`: Huffman tables fitted to the image (the same pixels, a third fewer bytes on a
    preview; slower on a big image)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, int(optimize)]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:  # pragma: no cover
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def encode_stored_png(array: np.ndarray, png_filter: PngFilter = "up") -> bytes:
    """How artifacts are stored: a mask as a 1-bit PNG (mode "1": one bit a pixel, ~4x smaller
    than 8-bit grey at zlib level 1's default strategy, ~1.4x than 8-bit grey with :func:`encode_png`'s
    RLE strategy, on a canvas's mask), anything else as :func:`encode_png`. Every PNG reader
    (:func:`decode_png`, :func:`decode_mask`, browsers, Pillow) reads it back unchanged."""
    if array.dtype != bool:
        return encode_png(array, png_filter)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


PREVIEW_OVERSAMPLING = 4


def preview_data_uri(array: np.ndarray, max_side: int = 64) -> str:
    """A tiny preview as a data URI, small enough to live in Dagster's event log (it is stored
    there in the materialization): a mask as a 1-bit PNG (~0.3 KB), an image as a low-quality
    JPEG with optimized Huffman tables (~0.6 KB: the standard tables cost ~0.3 KB more, issue 28)."""
    h, w = array.shape[:2]
    size = (max(1, round(w * max_side / max(h, w))), max(1, round(h * max_side / max(h, w))))
    # Every PREVIEW_OVERSAMPLING-th pixel is still 4x4 samples per preview pixel for INTER_AREA to
    # average; resizing the whole 5 MP canvas took ~20 ms a preview, 11 previews a request.
    step = max(1, max(h, w) // (max_side * PREVIEW_OVERSAMPLING))
    array = array[::step, ::step]
    if array.dtype == bool:
        grey = cv2.resize(array.astype(np.uint8) * 255, size, interpolation=cv2.INTER_AREA)
        return "data:image/png;base64," + base64.b64encode(encode_stored_png(grey > 127)).decode("ascii")
    small = cv2.resize(array, size, interpolation=cv2.INTER_AREA)
    if small.ndim == 2:
        small = np.stack([small] * 3, axis=-1)
    encoded = base64.b64encode(encode_jpeg(small, quality=60, optimize=True)).decode("ascii")
    return f"data:image/jpeg;base64,{encoded}"


# --------------------------------------------------------------------------- canvas


@dataclass(frozen=True)
class CanvasTransform:
    """How an original image was placed on the canvas: uniform scale, then an offset.

    Recorded so that points given on the original image can be moved onto the canvas.
    """

    source_width: int
    source_height: int
    canvas_width: int
    canvas_height: int
    content_width: int
    content_height: int
    offset_x: int
    offset_y: int

    @property
    def scale_x(self) -> float:
        return self.content_width / self.source_width

    @property
    def scale_y(self) -> float:
        return self.content_height / self.source_height

    def to_canvas(self, x: float, y: float) -> tuple[float, float]:
        """Normalised (x, y) on the original image -> continuous canvas coordinates."""
        return (self.offset_x + x * self.content_width, self.offset_y + y * self.content_height)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> CanvasTransform:
        return cls(**{k: int(data[k]) for k in cls.__dataclass_fields__})

    @classmethod
    def identity(cls, width: int, height: int) -> CanvasTransform:
        return cls(width, height, width, height, width, height, 0, 0)


def plan_canvas(
    source_width: int,
    source_height: int,
    canvas_width: int = CANVAS_WIDTH,
    canvas_height: int = CANVAS_HEIGHT,
) -> CanvasTransform:
    """The largest uniform scale that fits the canvas, centred: never distorts the photo."""
    if source_width <= 0 or source_height <= 0:
        raise ValueError("image has no pixels")
    scale = min(canvas_width / source_width, canvas_height / source_height)
    content_w = min(canvas_width, max(1, round(source_width * scale)))
    content_h = min(canvas_height, max(1, round(source_height * scale)))
    return CanvasTransform(
        source_width=source_width,
        source_height=source_height,
        canvas_width=canvas_width,
        canvas_height=canvas_height,
        content_width=content_w,
        content_height=content_h,
        offset_x=(canvas_width - content_w) // 2,
        offset_y=(canvas_height - content_h) // 2,
    )


def border_colour(image: RGBImage, width: int = 4) -> tuple[int, int, int]:
    """Median colour of the outer frame: the colour a letterbox should continue."""
    strips = np.concatenate(
        [
            image[:width].reshape(-1, 3),
            image[-width:].reshape(-1, 3),
            image[:, :width].reshape(-1, 3),
            image[:, -width:].reshape(-1, 3),
        ]
    )
    med = np.median(strips, axis=0)
    return (int(med[0]), int(med[1]), int(med[2]))


def fit_to_canvas(
    image: RGBImage,
    canvas_width: int = CANVAS_WIDTH,
    canvas_height: int = CANVAS_HEIGHT,
) -> tuple[RGBImage, CanvasTransform]:
    """Scale the photo uniformly onto the canvas; the margin takes the photo's border colour."""
    h, w = image.shape[:2]
    transform = plan_canvas(w, h, canvas_width, canvas_height)
    return apply_canvas_transform(image, transform), transform


def apply_canvas_transform(
    array: np.ndarray, transform: CanvasTransform, fill: Sequence[int] | None = None
) -> np.ndarray:
    """Place an image (RGB) or a mask (bool) on the canvas as ``transform`` says."""
    is_mask = array.dtype == bool
    src = array.astype(np.uint8) * 255 if is_mask else array
    size = (transform.content_width, transform.content_height)
    if size == (src.shape[1], src.shape[0]):
        content = src
    else:
        shrinking = transform.content_width < src.shape[1]
        interp = cv2.INTER_NEAREST if is_mask else (cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
        content = cv2.resize(src, size, interpolation=interp)
    if is_mask:
        canvas = np.zeros((transform.canvas_height, transform.canvas_width), dtype=np.uint8)
    else:
        colour = fill if fill is not None else border_colour(array)
        canvas = np.empty((transform.canvas_height, transform.canvas_width, 3), dtype=np.uint8)
        canvas[:] = np.asarray(colour, dtype=np.uint8)
    y0, x0 = transform.offset_y, transform.offset_x
    canvas[y0 : y0 + transform.content_height, x0 : x0 + transform.content_width] = content
    return canvas > 127 if is_mask else canvas


# --------------------------------------------------------------------------- strokes

StrokeMode = Literal["add", "remove"]


@dataclass(frozen=True)
class CanvasStroke:
    """A brush stroke in canvas pixel coordinates; ``size`` is the brush diameter."""

    points: tuple[tuple[float, float], ...]
    mode: StrokeMode
    size: float


def stroke_to_canvas(
    points: Iterable[tuple[float, float]], mode: StrokeMode, size: float, transform: CanvasTransform
) -> CanvasStroke:
    return CanvasStroke(points=tuple(transform.to_canvas(x, y) for x, y in points), mode=mode, size=float(size))


# Fractional bits of the coordinates handed to OpenCV's drawing functions (1/16 px).
_DRAW_SHIFT = 4
# OpenCV fills a shape's boundary pixels inclusively, so shapes drawn at the exact radius cover
# pixels whose centre lies up to ~0.7 px outside it; drawing a quarter pixel narrower balances
# that (largest error 0.57 px on random strokes against the exact distance, mostly added pixels).
_DRAW_INSET = 0.25
_DRAW_LIMIT = float(1 << 26)  # coordinates beyond this would overflow OpenCV's fixed point


def rasterize_stroke(shape: tuple[int, int], stroke: CanvasStroke) -> Mask:
    """Pixels whose centre lies within size/2 of the stroke's polyline, up to ~0.6 px at the edge.

    Painted with OpenCV: a filled disc at every point (the round caps and joins) and a filled
    rectangle along every segment, at sub-pixel precision. OpenCV clips to the image and fills
    whole spans, so the cost is proportional to the painted area (sum over segments of about
    (length + size) x size, clipped to the image), not to the stroke's bounding box.
    """
    covered = np.zeros(shape, dtype=np.uint8)
    _paint(covered, stroke, 1)
    return covered.view(bool)


def _paint(canvas: np.ndarray, stroke: CanvasStroke, value: int) -> None:
    """Set the stroke's pixels of a uint8 ``canvas`` to ``value`` (see `rasterize_stroke`)."""
    if stroke.size <= 0 or not stroke.points:
        return
    one = 1 << _DRAW_SHIFT
    radius = max(stroke.size / 2.0 - _DRAW_INSET, 0.0)
    # Continuous coordinates (pixel i's centre at i + 0.5) -> OpenCV's (pixel i's centre at i).
    points = np.clip(np.asarray(stroke.points, dtype=np.float64) - 0.5, -_DRAW_LIMIT, _DRAW_LIMIT)
    fixed_radius = round(radius * one)
    for x, y in np.round(points * one).astype(np.int64).tolist():
        cv2.circle(canvas, (x, y), fixed_radius, value, cv2.FILLED, cv2.LINE_8, _DRAW_SHIFT)
    starts, ends = points[:-1], points[1:]
    delta = ends - starts
    length = np.hypot(delta[:, 0], delta[:, 1])
    moving = length > 0
    normal = np.stack([-delta[moving, 1], delta[moving, 0]], axis=1) / length[moving, None] * radius
    a, b = starts[moving], ends[moving]
    quads = np.stack([a + normal, b + normal, b - normal, a - normal], axis=1)
    for quad in np.round(quads * one).astype(np.int32):
        cv2.fillConvexPoly(canvas, quad, value, cv2.LINE_8, _DRAW_SHIFT)


def apply_strokes(mask: Mask, strokes: Sequence[CanvasStroke]) -> Mask:
    """Paint strokes in order: later strokes win where they overlap earlier ones.

    Painted straight into one copy of the mask (add paints 1, remove paints 0), so a request
    with many small strokes costs their area, not a canvas-sized buffer per stroke.
    """
    refined = mask.astype(np.uint8)
    for stroke in strokes:
        _paint(refined, stroke, 1 if stroke.mode == "add" else 0)
    return refined.view(bool)


def content_box(mask: Mask, margin: int = 0) -> tuple[slice, slice] | None:
    """The rows and columns of ``mask`` that hold its set pixels, widened by ``margin`` pixels of
    background on each side (within the image); None for an empty mask.

    The mask kernels below work on this box, not the canvas: a request's jewelry covers a small
    part of the 5.3-megapixel canvas, and a full-canvas pass of each kernel cost 20-50 ms (~115 ms
    a request for the speck removal and the metrics points, benchmarks.profile_run_worker).
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    return (
        slice(max(0, int(rows[0]) - margin), min(h, int(rows[-1]) + 1 + margin)),
        slice(max(0, int(cols[0]) - margin), min(w, int(cols[-1]) + 1 + margin)),
    )


# Background around the box for the 5x5 distance transform: a step of its mask moves at most two
# pixels, so no path from inside reaches a zero beyond two zero rings without crossing them, and
# the distances within the box equal the full canvas's.
_DISTANCE_MARGIN = 2


def _distance_inside(crop: Mask) -> np.ndarray:
    """L2 (5x5 mask) distance of each pixel to the nearest background pixel, the image border
    counting as background."""
    return cv2.distanceTransform(np.pad(crop.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]


def remove_specks(mask: Mask, min_area: int) -> Mask:
    """Drop connected components smaller than ``min_area`` pixels (stray brush dabs, noise)."""
    box = content_box(mask)
    if min_area <= 1 or box is None:
        return mask.copy()
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask[box].astype(np.uint8), connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    kept = np.zeros_like(mask)
    kept[box] = keep[labels]
    return kept


def interior_points(
    mask: Mask, limit: int = 8, covered: Sequence[tuple[float, float]] = ()
) -> list[tuple[float, float]]:
    """One point deep inside each of the ``limit`` largest components of ``mask`` that hold none
    of the ``covered`` points (the pixel farthest from the component's edge, as a pixel centre):
    clicks that surely lie on each part of it."""
    box = content_box(mask, _DISTANCE_MARGIN)
    if box is None:
        return []
    crop = mask[box]
    top, left = box[0].start, box[1].start
    count, labels, stats, _ = cv2.connectedComponentsWithStats(crop.astype(np.uint8), connectivity=8)
    h, w = mask.shape
    taken = set()
    for cx, cy in covered:
        if 0 <= cx < w and 0 <= cy < h:
            row, col = int(cy) - top, int(cx) - left  # outside the box: on the background (label 0)
            in_box = 0 <= row < crop.shape[0] and 0 <= col < crop.shape[1]
            taken.add(int(labels[row, col]) if in_box else 0)
    order = sorted((i for i in range(1, count) if i not in taken), key=lambda i: -int(stats[i, cv2.CC_STAT_AREA]))
    distance = _distance_inside(crop)
    points = []
    for index in order[:limit]:
        inside = np.where(labels == index, distance, -1.0)
        y, x = np.unravel_index(int(np.argmax(inside)), inside.shape)
        points.append((float(x + left) + 0.5, float(y + top) + 0.5))
    return points


def spread_points(mask: Mask, spacing: int = 120, depth: float = 12.0, limit: int = 32) -> list[tuple[float, float]]:
    """Points spread over ``mask`` (one per ``spacing`` cell, each at least ``depth`` pixels and
    half the mask's greatest depth inside it), at most ``limit``; a segmenter prompted with them
    covers every part of the mask, where a single click would leave far parts out."""
    box = content_box(mask, _DISTANCE_MARGIN)
    if box is None:
        return []
    distance = _distance_inside(mask[box])
    top, left = box[0].start, box[1].start
    ys, xs = np.nonzero(distance > max(depth, 0.5 * float(distance.max())))  # well inside: no edge pixels
    cells: dict[tuple[int, int], tuple[float, float]] = {}
    for x, y in zip((xs + left).tolist(), (ys + top).tolist(), strict=True):
        cells.setdefault((x // spacing, y // spacing), (x + 0.5, y + 0.5))
    points = list(cells.values())
    step = max(1, -(-len(points) // limit))
    return points[::step][:limit]


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class MaskMetrics:
    """Fidelity of a generated image's jewelry mask G against the reference mask R.

    precision = |G ∩ R| / |G|, recall = |G ∩ R| / |R|, iou = |G ∩ R| / |G ∪ R|,
    growth_ratio = |G| / |R|.  An empty G gives precision 0.
    """

    precision: float
    recall: float
    iou: float
    growth_ratio: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def mask_metrics(generated: Mask, reference: Mask) -> MaskMetrics:
    if generated.shape != reference.shape:
        raise ValueError(f"mask shapes differ: {generated.shape} vs {reference.shape}")
    ref_area = int(np.count_nonzero(reference))
    if ref_area == 0:
        raise ValueError("the reference mask is empty")
    gen_area = int(np.count_nonzero(generated))
    inter = int(np.count_nonzero(generated & reference))
    union = gen_area + ref_area - inter
    return MaskMetrics(
        precision=inter / gen_area if gen_area else 0.0,
        recall=inter / ref_area,
        iou=inter / union,
        growth_ratio=gen_area / ref_area,
    )
