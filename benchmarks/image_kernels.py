"""Target 5: image kernels on a 12-megapixel JPEG, against a plain-Pillow baseline in the same run.

    .venv/bin/python -m benchmarks.image_kernels [--repeats 15] [--only provenance]

- decode + canvas resize + encode: `imaging.decode_image` (with JPEG draft decoding at the
  canvas's scale) + `imaging.fit_to_canvas` + `imaging.encode_png` (what the IO manager stores),
  against Pillow's open/convert/LANCZOS resize/paste/save PNG. Target <= 0.35 s.
- mask metrics on the 2000x2667 canvas, against a float64 numpy formulation. Target <= 20 ms.
- brush refinement, 20 strokes of 8 points, size 40, against cv2.polylines-free naive
  per-pixel distance over the whole canvas for one stroke x 20. Target <= 30 ms.
- brush strokes, painted (`imaging.apply_strokes`, OpenCV) against the exact per-segment
  bounding-box distance it replaced (issue 14): a typical request (20 strokes of 200 points at
  60 px, as the web page sends) and the costliest strokes the request limits allow (a 1,830-point
  zig-zag between the canvas corners at 300 px, ~2e9 px of painted-area bound; 20,000 points
  over 200 strokes at 1 px). The old version is timed on a prefix of the pathological strokes
  and scaled by segment count (it is linear in segments): 1,830 segments of it take ~3 minutes.
- event-log previews (`imaging.preview_data_uri`, 11 a request) of the canvas and of a mask,
  against the same preview resized from every pixel of the canvas (what it did before).
- stored PNG (fifteenth session): `imaging.encode_png` (zlib level 1 with the RLE strategy)
  against level 1's default strategy, on the photo's canvas and the ring sample's: time and size.
- provenance (issue 33): signing the 2000x2667 canvas's JPEG (XMP field + C2PA manifest,
  `ImageSigner.sign`, test identity) and its stored PNG, against encoding it unsigned
  (`imaging.encode_jpeg` / `encode_png`) in the same run. Target: < 50 ms a result (the JPEG).
Prints median and p95 of each, and ratio = baseline median / ours (for signing: the cost as a
share of the unsigned encode).
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import cv2
import numpy as np
from PIL import Image

from benchmarks.common import REPO_ROOT, percentile
from jewel_dagster.provenance.manifest import GenerationFacts, sha256_hex
from jewel_dagster.provenance.signer import ImageSigner, make_test_identity
from jewel_dagster.vision import classical, imaging


def _photo_jpeg(width: int = 4000, height: int = 3000) -> bytes:
    """A 12 MP photo-like JPEG: smooth gradients, texture and edges (JPEG size like a phone's)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([120 + 60 * np.sin(xx / 400), 110 + 50 * np.cos(yy / 300), 90 + 40 * np.sin((xx + yy) / 500)], -1)
    noise = rng.normal(0, 12, (height // 4, width // 4, 3)).astype(np.float32)
    noise = np.kron(noise, np.ones((4, 4, 1), np.float32))
    image = np.clip(base + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def _baseline_pipeline(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    scale = min(2000 / rgb.width, 2667 / rgb.height)
    resized = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (2000, 2667), (255, 255, 255))
    canvas.paste(resized, ((2000 - resized.width) // 2, (2667 - resized.height) // 2))
    out = io.BytesIO()
    canvas.save(out, "PNG")
    return out.getvalue()


def _our_pipeline(data: bytes) -> bytes:
    canvas, _ = imaging.fit_to_canvas(imaging.decode_image(data))
    return imaging.encode_png(canvas)


def _full_preview(array: np.ndarray) -> str:
    """The preview resized from every pixel of the array: `preview_data_uri` before striding."""
    h, w = array.shape[:2]
    size = (round(w * 64 / max(h, w)), round(h * 64 / max(h, w)))
    if array.dtype == bool:
        grey = cv2.resize(array.astype(np.uint8) * 255, size, interpolation=cv2.INTER_AREA)
        return base64.b64encode(imaging.encode_stored_png(grey > 127)).decode("ascii")
    return base64.b64encode(
        imaging.encode_jpeg(cv2.resize(array, size, interpolation=cv2.INTER_AREA), quality=60)
    ).decode()


def _baseline_metrics(generated: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    g, r = generated.astype(np.float64), reference.astype(np.float64)
    inter = float((g * r).sum())
    return {"precision": inter / g.sum(), "recall": inter / r.sum(), "iou": inter / float(np.maximum(g, r).sum())}


def _strokes() -> list[imaging.CanvasStroke]:
    rng = np.random.default_rng(1)
    strokes = []
    for _ in range(20):
        start = rng.uniform(200, 1800, 2)
        points = tuple((float(start[0] + 12 * i), float(start[1] + 5 * i)) for i in range(8))
        strokes.append(imaging.CanvasStroke(points, "add" if rng.random() > 0.3 else "remove", 40.0))
    return strokes


def _baseline_strokes(mask: np.ndarray, strokes: list[imaging.CanvasStroke]) -> np.ndarray:
    """Distance of every canvas pixel to every segment: what the bounding-box version avoids."""
    out = mask.copy()
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]].astype(np.float32) + 0.5
    for stroke in strokes:
        covered = np.zeros(mask.shape, bool)
        for (ax, ay), (bx, by) in zip(stroke.points[:-1], stroke.points[1:], strict=True):
            dx, dy = bx - ax, by - ay
            t = np.clip(((xx - ax) * dx + (yy - ay) * dy) / (dx * dx + dy * dy), 0, 1)
            covered |= (xx - ax - t * dx) ** 2 + (yy - ay - t * dy) ** 2 <= (stroke.size / 2) ** 2
        out = out | covered if stroke.mode == "add" else out & ~covered
    return out


def _exact_bbox_stroke(shape: tuple[int, int], stroke: imaging.CanvasStroke) -> np.ndarray:
    """The rasteriser before issue 14: exact distance over each segment's bounding box, float64."""
    height, width = shape
    covered = np.zeros(shape, dtype=bool)
    radius = stroke.size / 2.0
    pts = stroke.points if len(stroke.points) > 1 else (stroke.points[0], stroke.points[0])
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:], strict=True):
        x0 = max(0, int(np.floor(min(ax, bx) - radius - 0.5)))
        x1 = min(width, int(np.ceil(max(ax, bx) + radius + 0.5)))
        y0 = max(0, int(np.floor(min(ay, by) - radius - 0.5)))
        y1 = min(height, int(np.ceil(max(ay, by) + radius + 0.5)))
        if x0 >= x1 or y0 >= y1:
            continue
        cx = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
        cy = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
        dx, dy = bx - ax, by - ay
        seg_len2 = dx * dx + dy * dy
        t = np.zeros((1, 1)) if seg_len2 == 0.0 else np.clip(((cx - ax) * dx + (cy - ay) * dy) / seg_len2, 0.0, 1.0)
        covered[y0:y1, x0:x1] |= (cx - (ax + t * dx)) ** 2 + (cy - (ay + t * dy)) ** 2 <= radius * radius
    return covered


def _exact_bbox_strokes(mask: np.ndarray, strokes: list[imaging.CanvasStroke]) -> np.ndarray:
    refined = mask.copy()
    for stroke in strokes:
        covered = _exact_bbox_stroke(refined.shape, stroke)
        refined = refined | covered if stroke.mode == "add" else refined & ~covered
    return refined


def _typical_strokes() -> list[imaging.CanvasStroke]:
    """20 strokes of 200 pointer moves (~4 px each) at 60 px: a person painting on the web page."""
    rng = np.random.default_rng(2)
    strokes = []
    for i in range(20):
        start, step = rng.uniform(300, 1700, 2), rng.uniform(-4, 4, 2)
        points = tuple((float(start[0] + step[0] * k), float(start[1] + step[1] * k)) for k in range(200))
        strokes.append(imaging.CanvasStroke(points, "add" if i % 4 else "remove", 60.0))
    return strokes


def _zigzag(points: int, size: float) -> list[imaging.CanvasStroke]:
    corners = tuple((0.0, 0.0) if i % 2 == 0 else (2000.0, 2667.0) for i in range(points))
    return [imaging.CanvasStroke(corners, "add", size)]


def _thin_many() -> list[imaging.CanvasStroke]:
    rng = np.random.default_rng(3)
    return [
        imaging.CanvasStroke(tuple(map(tuple, rng.uniform(0, 2000, (100, 2)).tolist())), "add", 1.0) for _ in range(200)
    ]


def _report_scaled(name: str, ours: list[float], old: list[float], scale: float) -> None:
    med, base = statistics.median(ours), statistics.median(old) * scale
    print(
        f"{name}: ours median {med * 1000:.1f} ms p95 {percentile(ours, 95) * 1000:.1f} ms | "
        f"old exact-bbox median {base * 1000:.1f} ms"
        + (f" (measured on 1/{scale:.0f} of the segments, scaled)" if scale != 1 else "")
        + f" | ratio {base / med:.0f}x"
    )


def _report(name: str, ours: list[float], baseline: list[float], target: float) -> None:
    med, base = statistics.median(ours), statistics.median(baseline)
    verdict = "meets" if med <= target else "MISSES"
    print(
        f"{name}: ours median {med * 1000:.1f} ms p95 {percentile(ours, 95) * 1000:.1f} ms | "
        f"baseline median {base * 1000:.1f} ms | ratio {base / med:.1f}x | target {target * 1000:.0f} ms: {verdict}"
    )


def _level_one_png(array: np.ndarray) -> bytes:
    """The stored PNG before the fifteenth session: zlib level 1, default strategy, "up" filter."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(array, cv2.COLOR_RGB2BGR), params)
    assert ok
    return bytes(buf.tobytes())


def _stored_png(canvas: np.ndarray, repeats: int) -> None:
    """`imaging.encode_png` (zlib's RLE strategy) against level 1's default strategy, on the photo
    canvas and on the smooth ring sample's canvas: time and size (both stay lossless)."""
    ring, _ = imaging.fit_to_canvas(imaging.decode_image((REPO_ROOT / "samples" / "ring.jpg").read_bytes()))
    for name, array in (("photo canvas", canvas), ("ring sample canvas", ring)):
        ours, baseline = imaging.encode_png(array), _level_one_png(array)
        assert np.array_equal(imaging.decode_image(ours), array)
        _report_plain(
            f"stored PNG, {name} ({len(ours) / 1e6:.2f} MB against {len(baseline) / 1e6:.2f} MB: "
            f"{len(baseline) / len(ours):.2f}x smaller)",
            _time(lambda a=array: imaging.encode_png(a), repeats),
            _time(lambda a=array: _level_one_png(a), repeats),
            "level 1 default strategy",
        )


def _signing(canvas: np.ndarray, repeats: int) -> None:
    """What provenance adds to each generated image: the signing of bytes already encoded."""
    signer = ImageSigner(make_test_identity())
    facts = GenerationFacts("flux", "http", "jewelry-gen-bench", datetime.now(UTC), sha256_hex(b"photo"), "image/jpeg")
    for mime, encode, target in (
        ("image/jpeg", imaging.encode_jpeg, 0.050),
        ("image/png", imaging.encode_png, None),
    ):
        encoded = encode(canvas)
        signing = _time(lambda e=encoded, m=mime: signer.sign(e, m, facts), repeats)  # type: ignore[misc]
        plain = _time(lambda e=encode: e(canvas), repeats)  # type: ignore[misc]
        med, enc = statistics.median(signing), statistics.median(plain)
        verdict = f" | target {target * 1000:.0f} ms: {'meets' if med <= target else 'MISSES'}" if target else ""
        print(
            f"C2PA signing, 2000x2667 {mime[6:].upper()} ({len(encoded) / 1e6:.1f} MB): median {med * 1000:.1f} ms "
            f"p95 {percentile(signing, 95) * 1000:.1f} ms | unsigned encode median {enc * 1000:.1f} ms "
            f"p95 {percentile(plain, 95) * 1000:.1f} ms | signing = {med / enc:.2f}x the encode{verdict}"
        )


def full_canvas_backdrop(shape: tuple[int, int], seed: int, radial: bool = False) -> np.ndarray:
    """The stand-in generators' backdrop computed at every pixel (before 2026-12-05's seventh
    session): the baseline of `classical.studio_background`, which computes it on a grid an
    eighth of the side (tests/unit/test_classical_vision.py holds them within one grey level)."""
    h, w = shape
    top, bottom = (
        np.asarray(c, dtype=np.float32) for c in classical.STUDIO_PALETTES[seed % len(classical.STUDIO_PALETTES)]
    )
    if radial:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = np.clip(np.sqrt(((xx - w / 2) / w) ** 2 + ((yy - h * 0.45) / h) ** 2) / 0.7, 0, 1)[..., None]
    else:
        t = np.broadcast_to(np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None] ** 1.6, (h, w, 1))
    backdrop = top * (1 - t) + bottom * t
    coarse = np.random.default_rng(seed).normal(0.0, 1.5, size=(h // 8 + 1, w // 8 + 1, 1)).astype(np.float32)
    grain = np.asarray(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR))[..., None]
    return np.clip(backdrop + grain, 0, 255).astype(np.uint8)


def full_canvas_shadow(background: np.ndarray, mask: np.ndarray, strength: float = 0.25) -> np.ndarray:
    """The contact shadow blurred over the whole canvas: the baseline of `classical.soft_shadow`,
    which blurs the jewelry's box alone (the same pixels)."""
    h, w = mask.shape
    shift, k = max(2, h // 200), max(3, (h // 60) | 1)
    shifted = np.zeros((h, w), dtype=np.float32)
    shifted[shift:] = mask[:-shift].astype(np.float32)
    shadow = np.asarray(cv2.GaussianBlur(shifted, (k, k), 0))
    return (background.astype(np.float32) * (1 - strength * shadow[..., None])).astype(np.uint8)


def _studio(repeats: int) -> None:
    """The local stand-in generators' backdrop (each request makes two: Flux's sweep, Gemini's
    radial spot) and its contact shadow, on the canvas with a ring-sized jewelry mask."""
    mask = np.zeros((2667, 2000), bool)
    mask[1100:1500, 800:1200] = True
    for radial in (False, True):
        _report_plain(
            f"stand-in backdrop ({'radial' if radial else 'sweep'})",
            _time(lambda r=radial: classical.studio_background(mask.shape, 1, radial=r), repeats),
            _time(lambda r=radial: full_canvas_backdrop(mask.shape, 1, radial=r), repeats),
        )
    backdrop = classical.studio_background(mask.shape, 1)
    _report_plain(
        "stand-in contact shadow",
        _time(lambda: classical.soft_shadow(backdrop, mask), repeats),
        _time(lambda: full_canvas_shadow(backdrop, mask), repeats),
    )


def _report_plain(name: str, ours: list[float], baseline: list[float], baseline_name: str = "whole canvas") -> None:
    med, base = statistics.median(ours), statistics.median(baseline)
    print(
        f"{name}: ours median {med * 1000:.1f} ms p95 {percentile(ours, 95) * 1000:.1f} ms | "
        f"{baseline_name} median {base * 1000:.1f} ms p95 {percentile(baseline, 95) * 1000:.1f} ms | "
        f"ratio {base / med:.1f}x"
    )


def _segmentation(repeats: int) -> None:
    """The classical stand-in's point segmentation (GrabCut on a downscaled copy) of the ring
    sample's canvas: at the working side in use against 640 px (the side before 2026-12-05), and
    how far the masks agree (IoU)."""
    canvas = imaging.decode_image(_our_pipeline((REPO_ROOT / "samples" / "ring.jpg").read_bytes()))
    h, w = canvas.shape[:2]
    points = [classical.PixelPoint(0.245 * w, 0.467 * h, 1), classical.PixelPoint(0.9 * w, 0.9 * h, 0)]
    ours = classical.segment_from_points(canvas, points)
    at_640 = classical.segment_from_points(canvas, points, work_side=640)
    baseline = _time(lambda: classical.segment_from_points(canvas, points, work_side=640), repeats)
    agreement = (ours & at_640).sum() / max(1, (ours | at_640).sum())
    print(f"segmentation: working side {classical.WORK_SIDE} px vs 640 px, mask IoU {agreement:.3f}")
    mine = _time(lambda: classical.segment_from_points(canvas, points), repeats)
    med, base = statistics.median(mine), statistics.median(baseline)
    print(
        f"point segmentation (GrabCut): ours median {med * 1000:.1f} ms p95 {percentile(mine, 95) * 1000:.1f} ms | "
        f"640 px median {base * 1000:.1f} ms p95 {percentile(baseline, 95) * 1000:.1f} ms | ratio {base / med:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--only", choices=["all", "provenance", "segmentation", "studio", "png"], default="all")
    args = parser.parse_args()
    data = _photo_jpeg()
    if args.only == "png":
        _stored_png(imaging.decode_image(_our_pipeline(data)), args.repeats)
        return
    if args.only == "provenance":
        _signing(imaging.decode_image(_our_pipeline(data)), args.repeats)
        return
    if args.only == "segmentation":
        _segmentation(args.repeats)
        return
    if args.only == "studio":
        _studio(args.repeats)
        return
    print(f"input: 4000x3000 JPEG, {len(data) / 1e6:.1f} MB; {args.repeats} repeats after a warm-up")
    _report(
        "decode+resize+encode",
        _time(lambda: _our_pipeline(data), args.repeats),
        _time(lambda: _baseline_pipeline(data), max(3, args.repeats // 3)),
        0.35,
    )
    reference = np.zeros((2667, 2000), bool)
    reference[800:1900, 500:1500] = True
    generated = np.roll(reference, 40, axis=0)
    _report(
        "mask metrics",
        _time(lambda: imaging.mask_metrics(generated, reference), args.repeats),
        _time(lambda: _baseline_metrics(generated, reference), args.repeats),
        0.020,
    )
    canvas = imaging.decode_image(_our_pipeline(data))
    _stored_png(canvas, args.repeats)
    _signing(canvas, args.repeats)
    _segmentation(args.repeats)
    _studio(args.repeats)
    for name, array in (("preview of the canvas", canvas), ("preview of a mask", reference)):
        _report(
            name,
            _time(lambda a=array: imaging.preview_data_uri(a), args.repeats),
            _time(lambda a=array: _full_preview(a), args.repeats),
            0.005,
        )
    strokes = _strokes()
    _report(
        "brush refinement (20 strokes)",
        _time(lambda: imaging.apply_strokes(reference, strokes), args.repeats),
        _time(lambda: _baseline_strokes(reference, strokes), 3),
        0.030,
    )
    typical = _typical_strokes()
    _report_scaled(
        "strokes, typical (20 x 200 points, 60 px)",
        _time(lambda: imaging.apply_strokes(reference, typical), args.repeats),
        _time(lambda: _exact_bbox_strokes(reference, typical), 3),
        1.0,
    )
    worst = _zigzag(1830, 300.0)
    prefix = _zigzag(19, 300.0)  # 18 segments of the 1,829
    _report_scaled(
        "strokes, costliest allowed (1,830-point corner zig-zag, 300 px)",
        _time(lambda: imaging.apply_strokes(reference, worst), args.repeats),
        _time(lambda: _exact_bbox_strokes(reference, prefix), 3),
        1829 / 18,
    )
    thin = _thin_many()
    _report_scaled(
        "strokes, 200 x 100 random points, 1 px (20,000 points)",
        _time(lambda: imaging.apply_strokes(reference, thin), args.repeats),
        _time(lambda: _exact_bbox_strokes(reference, thin[:4]), 3),
        50.0,
    )
    old_bomb = _zigzag(10_000, 2667.0)  # issue 14's body, refused with 422 now
    _report_scaled(
        "strokes, issue 14's bomb (10,000-point zig-zag, 2,667 px; now refused)",
        _time(lambda: imaging.apply_strokes(reference, old_bomb), 3),
        _time(lambda: _exact_bbox_strokes(reference, _zigzag(11, 2667.0)), 3),
        9999 / 10,
    )


if __name__ == "__main__":
    main()
