"""Pure image functions: canvas placement, point mapping, brush strokes, metrics, codecs."""

from __future__ import annotations

import io
import time

import cv2
import numpy as np
import pytest
from PIL import Image

from jewel_dagster.vision import imaging
from jewel_dagster.vision.imaging import CanvasStroke, CanvasTransform, ImageDecodeError


def test_point_at_centre_of_landscape_photo_lands_on_canvas_centre_pixel() -> None:
    # 400x300 (4:3, not 3:4): scale = min(2000/400, 2667/300) = 5 -> content 2000x1500,
    # offset_y = (2667 - 1500) // 2 = 583. (0.5, 0.5) -> (0 + 1000, 583 + 750) = (1000, 1333).
    t = imaging.plan_canvas(400, 300)
    assert (t.content_width, t.content_height, t.offset_x, t.offset_y) == (2000, 1500, 0, 583)
    x, y = t.to_canvas(0.5, 0.5)
    assert (int(x), int(y)) == (1000, 1333)


def test_point_lands_on_the_same_photo_pixel_after_resize() -> None:
    # A photo with one red pixel block; its normalised centre must land on red on the canvas.
    photo = np.full((300, 500, 3), 255, np.uint8)
    photo[100:110, 400:410] = (255, 0, 0)
    canvas, t = imaging.fit_to_canvas(photo)
    x, y = t.to_canvas(405 / 500, 105 / 300)
    assert tuple(canvas[int(y), int(x)]) == (255, 0, 0)


def test_fit_to_canvas_never_distorts() -> None:
    for w, h in [(600, 400), (400, 1200), (3000, 4000), (101, 77)]:
        canvas, t = imaging.fit_to_canvas(np.zeros((h, w, 3), np.uint8))
        assert canvas.shape == (2667, 2000, 3)
        assert abs(t.content_width / t.content_height - w / h) < 0.01 * (w / h)
        assert t.content_width == 2000 or t.content_height == 2667


def test_canvas_margin_takes_the_border_colour() -> None:
    photo = np.full((400, 600, 3), (10, 200, 30), np.uint8)
    canvas, t = imaging.fit_to_canvas(photo)
    assert tuple(canvas[5, 5]) == (10, 200, 30)
    assert tuple(canvas[-5, -5]) == (10, 200, 30)


def test_transform_round_trips_through_dict() -> None:
    t = imaging.plan_canvas(640, 480)
    assert CanvasTransform.from_dict(t.to_dict()) == t


def _distance_to_polyline(shape: tuple[int, int], points: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Exact distance of every pixel centre (i + 0.5, j + 0.5) to the polyline: the reference."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64) + 0.5
    pts = points if len(points) > 1 else points * 2
    dist = np.full(shape, np.inf)
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:], strict=True):
        dx, dy = bx - ax, by - ay
        seg = dx * dx + dy * dy
        t = np.zeros_like(xx) if seg == 0 else np.clip(((xx - ax) * dx + (yy - ay) * dy) / seg, 0, 1)
        dist = np.minimum(dist, np.hypot(xx - ax - t * dx, yy - ay - t * dy))
    return dist


def _assert_within_a_pixel_of_exact(shape: tuple[int, int], stroke: CanvasStroke) -> None:
    covered = imaging.rasterize_stroke(shape, stroke)
    dist = _distance_to_polyline(shape, stroke.points)
    radius = stroke.size / 2
    assert covered[dist <= radius - 1].all(), "a pixel well inside the brush was left out"
    assert not covered[dist > radius + 1].any(), "a pixel well outside the brush was painted"
    exact = np.count_nonzero(dist <= radius)
    # They differ only in the boundary band, which is thin next to all but the thinnest strokes.
    assert abs(np.count_nonzero(covered) - exact) <= (0.35 if stroke.size < 6 else 0.1) * exact + 4


def test_known_stroke_covers_the_expected_pixels() -> None:
    # A horizontal stroke from (10, 10) to (20, 10) with diameter 4 covers the pixels whose
    # centre (i + 0.5, j + 0.5) is within 2 of the segment: rows 8..11 (centres 8.5..11.5)
    # for x centres 10.5..19.5, plus the round caps, up to a pixel at the boundary.
    stroke = CanvasStroke(points=((10.0, 10.0), (20.0, 10.0)), mode="add", size=4.0)
    covered = imaging.rasterize_stroke((30, 30), stroke)
    assert covered[8:12, 10:20].all() and not covered[6, 15] and not covered[13, 15]
    assert covered[10, 8] and covered[10, 21] and not covered[10, 6] and not covered[10, 23]
    _assert_within_a_pixel_of_exact((30, 30), stroke)


def test_single_point_stroke_is_a_disc() -> None:
    stroke = CanvasStroke(points=((50.0, 50.0),), mode="add", size=10.0)
    covered = imaging.rasterize_stroke((100, 100), stroke)
    # The exact disc has 80 pixel centres within 5 of (50, 50) (10, 10, 8, 8, 4 rows per
    # column |a| = 0.5 .. 4.5, both sides); the painted one agrees up to its boundary.
    assert abs(int(covered.sum()) - 80) <= 12
    assert covered[50, 50] and not covered[50, 56]
    _assert_within_a_pixel_of_exact((100, 100), stroke)


@pytest.mark.parametrize("seed", range(12))
def test_random_strokes_match_the_exact_distance_up_to_a_pixel(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = float(rng.choice([0.5, 1.0, 2.0, 3.0, 4.5, 7.0, 13.0, 40.0, 61.0, 100.0]))
    points = tuple((float(x), float(y)) for x, y in rng.uniform(-20, 220, (int(rng.integers(1, 9)), 2)))
    _assert_within_a_pixel_of_exact((200, 200), CanvasStroke(points, "add", size))


def test_stroke_cost_follows_the_painted_area_not_the_bounding_box() -> None:
    # 200 segments corner to corner of the canvas at the largest brush: the exact per-segment
    # bounding-box version took ~90 ms a segment here (18 s); painting them takes milliseconds.
    corners = tuple((0.0, 0.0) if i % 2 == 0 else (2000.0, 2667.0) for i in range(201))
    mask = np.zeros((imaging.CANVAS_HEIGHT, imaging.CANVAS_WIDTH), bool)
    start = time.perf_counter()
    refined = imaging.apply_strokes(mask, [CanvasStroke(corners, "add", 300.0)])
    assert time.perf_counter() - start < 5.0  # a bound far from 18 s, safe on a loaded machine
    assert refined[1333, 1000] and refined[0, 0] and not refined[0, 1999]


def test_strokes_add_then_remove_in_order() -> None:
    mask = np.zeros((40, 40), bool)
    add = CanvasStroke(points=((5.0, 20.0), (35.0, 20.0)), mode="add", size=6.0)
    remove = CanvasStroke(points=((20.0, 10.0), (20.0, 30.0)), mode="remove", size=4.0)
    refined = imaging.apply_strokes(mask, [add, remove])
    assert refined[20, 10] and refined[20, 30]
    assert not refined[20, 19] and not refined[20, 20]
    assert not mask.any()  # the input is left alone


def test_stroke_outside_the_canvas_is_clipped() -> None:
    stroke = CanvasStroke(points=((-50.0, -50.0), (-10.0, -10.0)), mode="add", size=8.0)
    assert not imaging.rasterize_stroke((20, 20), stroke).any()


def test_metrics_on_hand_built_masks() -> None:
    reference = np.zeros((10, 10), bool)
    reference[0:4, 0:5] = True  # 20 pixels
    generated = np.zeros((10, 10), bool)
    generated[2:6, 0:5] = True  # 20 pixels, 10 shared
    m = imaging.mask_metrics(generated, reference)
    assert m.precision == pytest.approx(10 / 20)
    assert m.recall == pytest.approx(10 / 20)
    assert m.iou == pytest.approx(10 / 30)
    assert m.growth_ratio == pytest.approx(1.0)

    grown = reference.copy()
    grown[4, 0:5] = True  # 25 pixels, all 20 reference pixels kept
    m = imaging.mask_metrics(grown, reference)
    assert (m.precision, m.recall, m.iou, m.growth_ratio) == pytest.approx((0.8, 1.0, 0.8, 1.25))


def test_metrics_edge_cases() -> None:
    ref = np.ones((4, 4), bool)
    assert imaging.mask_metrics(np.zeros((4, 4), bool), ref).to_dict() == {
        "precision": 0.0,
        "recall": 0.0,
        "iou": 0.0,
        "growth_ratio": 0.0,
    }
    with pytest.raises(ValueError, match="empty"):
        imaging.mask_metrics(ref, np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="shapes"):
        imaging.mask_metrics(np.ones((3, 4), bool), ref)


def test_decode_applies_exif_orientation() -> None:
    # Stored as 40x20 with orientation 6 ("rotate 90 CW to display"): shown as 20x40.
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red on the stored left
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    decoded = imaging.decode_image(buf.getvalue())
    assert decoded.shape == (40, 20, 3)
    assert decoded[2, 10, 0] > 200 and decoded[2, 10, 2] < 60  # stored-left is now on top


def test_decode_flattens_transparency_on_white() -> None:
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert (imaging.decode_image(buf.getvalue()) == 255).all()


def test_decode_rejects_non_images_and_oversized_images() -> None:
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        imaging.decode_image(b"definitely not a picture")
    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, "PNG")
    with pytest.raises(ImageDecodeError, match="limit"):
        imaging.decode_image(buf.getvalue(), max_pixels=5000)


def test_stored_pngs_are_smaller_than_zlib_level_one_on_a_noisy_photo() -> None:
    """encode_png uses zlib's RLE strategy (benchmarks.image_kernels, "stored PNG": faster and
    smaller on photos): on a noisy photo-like image it beats level 1's default strategy."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:400, 0:500].astype(np.float32)
    base = np.stack([120 + 60 * np.sin(xx / 40), 110 + 50 * np.cos(yy / 30), 90 + 40 * np.sin((xx + yy) / 50)], -1)
    photo = np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
    level_one = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    ok, default_strategy = cv2.imencode(".png", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), level_one)
    assert ok
    stored = imaging.encode_png(photo)
    assert np.array_equal(imaging.decode_png(stored), photo)
    assert len(stored) < 0.95 * len(default_strategy), (len(stored), len(default_strategy))


def test_png_round_trip_is_lossless_for_images_and_masks() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (31, 17, 3), dtype=np.uint8)
    mask = rng.random((31, 17)) > 0.5
    assert np.array_equal(imaging.decode_png(imaging.encode_png(image)), image)
    assert np.array_equal(imaging.decode_png(imaging.encode_png(mask)), mask)


def test_remove_specks_keeps_large_components() -> None:
    mask = np.zeros((50, 50), bool)
    mask[10:30, 10:30] = True
    mask[45, 45] = True
    cleaned = imaging.remove_specks(mask, 10)
    assert cleaned[20, 20] and not cleaned[45, 45]
