"""Classical CPU stand-ins for the ML services (no learned models).

These are what the embedded default runs instead of BiRefNet, SAM3, the A100 server and
Gemini: deterministic, honest about being classical image processing, and good enough on
product photos to exercise the whole pipeline. Pure numpy/OpenCV: no Dagster, no HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from jewel_dagster.vision.imaging import Mask, RGBImage

# GrabCut runs on a downscaled copy; its cost grows with pixel count. 480 px: 2.2-3.0x cheaper
# than 640 px on the ring sample's canvas, the masks agreeing at IoU 0.98
# (`benchmarks.image_kernels --only segmentation`).
WORK_SIDE = 480


@dataclass(frozen=True)
class PixelPoint:
    """A click in canvas pixel coordinates; label 1 = on the jewelry, 0 = not."""

    x: float
    y: float
    label: int


# --------------------------------------------------------------------------- zoom check


def background_busyness(image: RGBImage, frame: float = 0.08) -> float:
    """How cluttered the photo's outer frame is, in [0, 1].

    A product shot on a plain backdrop has a frame of nearly one colour; a worn-jewelry photo
    (skin, clothes, a room) does not and needs its background removed before generation.
    The score is the frame's mean per-channel standard deviation over 64 (saturated at 1).
    """
    h, w = image.shape[:2]
    fh, fw = max(1, int(h * frame)), max(1, int(w * frame))
    small = cv2.resize(image, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    fh, fw = max(1, fh // 4), max(1, fw // 4)
    frame_px = np.concatenate(
        [
            small[:fh].reshape(-1, 3),
            small[-fh:].reshape(-1, 3),
            small[fh : sh - fh, :fw].reshape(-1, 3),
            small[fh : sh - fh, -fw:].reshape(-1, 3),
        ]
    ).astype(np.float32)
    return float(min(1.0, frame_px.std(axis=0).mean() / 64.0))


# --------------------------------------------------------------------------- helpers


def _downscale(image: np.ndarray, side: int = WORK_SIDE) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    factor = min(1.0, side / max(h, w))
    if factor == 1.0:
        return image, 1.0
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), factor


def _upscale_mask(small: np.ndarray, shape: tuple[int, int]) -> Mask:
    if small.shape == shape:
        return small.astype(bool)
    soft = cv2.resize(small.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return soft >= 0.5


def _grabcut(image: RGBImage, init: np.ndarray, iterations: int = 4) -> np.ndarray:
    """GrabCut from a GC_* label mask; returns the foreground as bool (init if it cannot run)."""
    labels = init.copy()
    has_fg = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).any()
    has_bg = np.isin(labels, (cv2.GC_BGD, cv2.GC_PR_BGD)).any()
    if not (has_fg and has_bg):
        return np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's GMM initialisation uses OpenCV's RNG: keep runs identical
    try:
        cv2.grabCut(
            cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
            labels,
            None,
            bgd,
            fgd,
            iterations,
            cv2.GC_INIT_WITH_MASK,  # type: ignore[call-overload]
        )
    except cv2.error:
        return np.isin(init, (cv2.GC_FGD, cv2.GC_PR_FGD))
    return np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))


def _components_touching(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Keep the connected components of ``mask`` that overlap the bool ``seeds`` mask."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[np.unique(labels[seeds & mask])] = True
    keep[0] = False
    return keep[labels]


# --------------------------------------------------------------------------- background


def remove_background(
    image: RGBImage, fill: tuple[int, int, int] = (255, 255, 255), work_side: int = 320
) -> tuple[RGBImage, Mask]:
    """Border-seeded GrabCut: the frame is background, the rest is probably foreground.

    Returns the image with the background painted ``fill`` and the foreground mask. Runs
    on a small copy (``work_side``): with most pixels undecided GrabCut's cost climbs
    steeply with size (4.7 s at 640 px against 0.35 s at 320 px on a 2000x2667 canvas).
    """
    small, _ = _downscale(image, work_side)
    sh, sw = small.shape[:2]
    margin = max(2, int(min(sh, sw) * 0.03))
    init = np.full((sh, sw), cv2.GC_PR_FGD, dtype=np.uint8)
    init[:margin] = cv2.GC_BGD
    init[-margin:] = cv2.GC_BGD
    init[:, :margin] = cv2.GC_BGD
    init[:, -margin:] = cv2.GC_BGD
    foreground = _upscale_mask(_grabcut(small, init, iterations=3), image.shape[:2])
    out = image.copy()
    out[~foreground] = np.asarray(fill, dtype=np.uint8)
    return out, foreground


# --------------------------------------------------------------------------- segmentation


def segment_from_points(
    image: RGBImage, points: Sequence[PixelPoint], colour_tolerance: int = 24, work_side: int = WORK_SIDE
) -> Mask:
    """Point-seeded segmentation: flood fill from the positive clicks, then GrabCut.

    The flood fill gives GrabCut a first idea of the object's colours; GrabCut then finds its
    edges. Negative clicks and the image frame are certain background. Only the components
    that contain a positive click are kept, as SAM keeps the object that was clicked.
    """
    positives = [p for p in points if p.label == 1]
    if not positives:
        raise ValueError("at least one point with label 1 (on the jewelry) is needed")
    small, factor = _downscale(image, work_side)
    sh, sw = small.shape[:2]

    def to_small(p: PixelPoint) -> tuple[int, int]:
        return (min(sw - 1, max(0, int(p.x * factor))), min(sh - 1, max(0, int(p.y * factor))))

    blurred = cv2.GaussianBlur(small, (3, 3), 0)
    flooded = np.zeros((sh, sw), dtype=bool)
    tol = (colour_tolerance,) * 3
    for p in positives:
        ff_mask = np.zeros((sh + 2, sw + 2), dtype=np.uint8)
        flags = 8 | cv2.FLOODFILL_MASK_ONLY | cv2.FLOODFILL_FIXED_RANGE | (255 << 8)
        cv2.floodFill(blurred.copy(), ff_mask, to_small(p), (0, 0, 0), tol, tol, flags)
        flooded |= ff_mask[1:-1, 1:-1] > 0

    margin = max(2, int(min(sh, sw) * 0.02))
    init = np.full((sh, sw), cv2.GC_PR_BGD, dtype=np.uint8)
    frame = np.zeros((sh, sw), dtype=bool)
    frame[:margin] = frame[-margin:] = True
    frame[:, :margin] = frame[:, -margin:] = True
    init[frame & ~flooded] = cv2.GC_BGD
    init[flooded] = cv2.GC_PR_FGD
    radius = max(2, int(min(sh, sw) * 0.01))
    for p in points:
        cv2.circle(init, to_small(p), radius, int(cv2.GC_FGD if p.label == 1 else cv2.GC_BGD), -1)

    foreground = _grabcut(small, init)
    seeds = np.zeros((sh, sw), dtype=bool)
    for p in positives:
        x, y = to_small(p)
        seeds[y, x] = True
    foreground = _components_touching(foreground, seeds)
    if not foreground.any():
        foreground = flooded
    return _upscale_mask(foreground, image.shape[:2])


def _colour_bins(pixels: np.ndarray) -> np.ndarray:
    """Quantise RGB to a 16x16x16 histogram bin index."""
    q = (pixels >> 4).astype(np.int32)
    return (q[..., 0] << 8) | (q[..., 1] << 4) | q[..., 2]


def segment_like_reference(image: RGBImage, reference: Mask, band: float = 0.15) -> Mask:
    """Find the jewelry in a generated image, using the reference mask only as a hint.

    Colour histograms of the jewelry (inside the reference) and of the new backdrop (beyond a
    band around it) decide each pixel near the reference; GrabCut then smooths the decision
    along edges. So jewelry the generator grew, shrank or repainted shows up as a different
    mask, and pixels far from the reference are background: a generator that moves the
    jewelry elsewhere scores 0, as it should.
    """
    if not reference.any():
        return np.zeros_like(reference)
    ys, xs = np.nonzero(reference)
    h, w = reference.shape
    pad = int(max(ys.max() - ys.min(), xs.max() - xs.min()) * band) + 8
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad + 1)
    crop_img, factor = _downscale(image[y0:y1, x0:x1])
    crop_ref = reference[y0:y1, x0:x1]
    small_ref = _upscale_mask(crop_ref.astype(np.uint8), crop_img.shape[:2])
    band_px = max(2, int(pad * factor))
    near = grow_mask(small_ref, band_px)

    bins = _colour_bins(crop_img)
    fg_hist = np.bincount(bins[small_ref], minlength=4096).astype(np.float64)
    bg_source = ~near if (~near).any() else ~small_ref
    bg_hist = np.bincount(bins[bg_source], minlength=4096).astype(np.float64)
    fg_hist /= max(1.0, fg_hist.sum())
    bg_hist /= max(1.0, bg_hist.sum())
    looks_like_jewelry = fg_hist[bins] > bg_hist[bins]

    init = np.full(small_ref.shape, cv2.GC_BGD, dtype=np.uint8)
    init[near] = np.where(looks_like_jewelry[near], cv2.GC_PR_FGD, cv2.GC_PR_BGD)
    found_small = _grabcut(crop_img, init, iterations=2)
    found_small = _components_touching(found_small, small_ref)
    found = np.zeros_like(reference)
    found[y0:y1, x0:x1] = _upscale_mask(found_small, crop_ref.shape)
    return found


# --------------------------------------------------------------------------- generation

STUDIO_PALETTES: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((236, 232, 226), (176, 168, 158)),  # warm grey sweep
    ((222, 229, 236), (140, 152, 168)),  # cool blue-grey
    ((240, 228, 214), (188, 160, 132)),  # sand
    ((226, 236, 228), (150, 172, 156)),  # sage
    ((58, 56, 64), (18, 18, 22)),  # dark velvet
)


def studio_background(shape: tuple[int, int], seed: int, radial: bool = False) -> RGBImage:
    """A studio backdrop: a vertical sweep (or a radial spot) with faint deterministic grain.

    Computed on a grid an eighth of the side and scaled up: the sweep, the spot and the grain are
    all smooth, so on the canvas the result is within one grey level of the full-size
    computation, for a fifth to an eighth of its CPU (it ran twice a request, 0.3-0.5 s each on
    the 5.3-megapixel canvas; benchmarks.image_kernels --only studio).
    """
    h, w = shape
    top, bottom = (np.asarray(c, dtype=np.float32) for c in STUDIO_PALETTES[seed % len(STUDIO_PALETTES)])
    coarse_h, coarse_w = h // 8 + 1, w // 8 + 1
    # The full-size pixel each grid point stands for under cv2.resize's mapping (pixel centres).
    ys = np.clip((np.arange(coarse_h, dtype=np.float32) + 0.5) * h / coarse_h - 0.5, 0, h - 1)
    xs = np.clip((np.arange(coarse_w, dtype=np.float32) + 0.5) * w / coarse_w - 0.5, 0, w - 1)
    if radial:
        yy, xx = (ys[:, None] - h * 0.45) / h, (xs[None, :] - w / 2) / w
        t = np.clip(np.sqrt(xx**2 + yy**2) / 0.7, 0, 1)[..., None]
    else:
        sweep = (ys / max(1, h - 1))[:, None, None] ** 1.6
        t = np.broadcast_to(sweep, (coarse_h, coarse_w, 1))
    backdrop = top * (1 - t) + bottom * t
    grain = np.random.default_rng(seed).normal(0.0, 1.5, size=(coarse_h, coarse_w, 1)).astype(np.float32)
    scaled = np.asarray(cv2.resize(backdrop + grain, (w, h), interpolation=cv2.INTER_LINEAR))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def soft_shadow(background: RGBImage, mask: Mask, strength: float = 0.25) -> RGBImage:
    """Darken the backdrop under the jewelry as a contact shadow would.

    Only the jewelry's box, widened by the blur's reach, can change: the blur and the product
    run on that crop alone (the same pixels as over the whole canvas, for a fraction of the work).
    """
    h, w = mask.shape
    shift = max(2, h // 200)
    k = max(3, (h // 60) | 1)
    out = background.copy()
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return out
    reach = k  # beyond k // 2 of the shifted mask the blur is exactly zero, so zero borders agree
    top, bottom = max(0, rows[0] + shift - reach), min(h, rows[-1] + shift + reach + 1)
    left, right = max(0, cols[0] - reach), min(w, cols[-1] + reach + 1)
    shifted = np.zeros((bottom - top, right - left), dtype=np.float32)  # the mask moved down by `shift`
    first = max(top, shift)
    shifted[first - top :] = mask[first - shift : bottom - shift, left:right]
    shadow = np.asarray(cv2.GaussianBlur(shifted, (k, k), 0))
    crop = background[top:bottom, left:right].astype(np.float32)
    out[top:bottom, left:right] = (crop * (1 - strength * shadow[..., None])).astype(np.uint8)
    return out


def grow_mask(mask: Mask, pixels: int) -> Mask:
    if pixels <= 0:
        return mask.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def composite_generation(image: RGBImage, mask: Mask, seed: int, radial: bool = False, grow_px: int = 0) -> RGBImage:
    """Keep every jewelry pixel, render a new backdrop around it.

    ``grow_px`` > 0 imitates a generator that bleeds the jewelry into its surroundings (the
    ring around the mask is painted with the jewelry's mean colour): it exists so quality
    checks can be shown failing on a known-bad generation.
    """
    background = soft_shadow(studio_background(mask.shape, seed, radial=radial), mask)
    out = background
    if grow_px > 0 and mask.any():
        ring = grow_mask(mask, grow_px) & ~mask
        out[ring] = image[mask].mean(axis=0).astype(np.uint8)
    out[mask] = image[mask]
    return out
