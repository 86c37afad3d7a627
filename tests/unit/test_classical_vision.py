"""The classical local backends on images whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.image_kernels import full_canvas_backdrop, full_canvas_shadow
from devtools.stack import REPO_ROOT
from jewel_dagster.vision import classical, imaging
from jewel_dagster.vision.classical import PixelPoint
from tests.support.photos import synthetic_ring


def test_segmenter_finds_known_object_from_one_click() -> None:
    image, truth = synthetic_ring()
    ys, xs = np.nonzero(truth)
    i = len(ys) // 3
    mask = classical.segment_from_points(image, [PixelPoint(float(xs[i]), float(ys[i]), 1)])
    assert imaging.mask_metrics(mask, truth).iou >= 0.9


def test_segmenter_works_on_a_small_copy_and_agrees_with_a_larger_one_on_the_ring_sample() -> None:
    """The working side trades GrabCut's cost (it grows with the pixel count) against detail:
    at the default side the ring sample's canvas is segmented as at 640 px (IoU >= 0.95)."""
    ring = imaging.decode_image((REPO_ROOT / "samples" / "ring.jpg").read_bytes())
    canvas, _ = imaging.fit_to_canvas(ring)
    h, w = canvas.shape[:2]
    points = [PixelPoint(0.245 * w, 0.467 * h, 1), PixelPoint(0.9 * w, 0.9 * h, 0)]
    assert classical.WORK_SIDE < 640  # a copy smaller than the 640 px it ran on before
    ours = classical.segment_from_points(canvas, points)
    larger = classical.segment_from_points(canvas, points, work_side=640)
    assert imaging.mask_metrics(ours, larger).iou >= 0.95


def test_segmenter_needs_a_positive_point() -> None:
    image, _ = synthetic_ring(400, 533)
    try:
        classical.segment_from_points(image, [PixelPoint(10, 10, 0)])
    except ValueError as exc:
        assert "label 1" in str(exc)
    else:
        raise AssertionError("expected a ValueError")


def test_generation_keeps_jewelry_pixels_and_replaces_background() -> None:
    image, truth = synthetic_ring(600, 800)
    out = classical.composite_generation(image, truth, seed=3)
    assert np.array_equal(out[truth], image[truth])
    assert np.mean(np.abs(out[~truth].astype(int) - image[~truth].astype(int))) > 20


@pytest.mark.parametrize("radial", [False, True])
def test_the_backdrop_from_its_coarse_grid_is_within_a_grey_level_of_every_pixel_computed(radial: bool) -> None:
    # The generators draw on the canvas; on a side eight times smaller the grid is coarser.
    for shape, levels in (((2667, 2000), 1), ((333, 250), 2)):
        ours = classical.studio_background(shape, seed=2, radial=radial).astype(int)
        assert np.abs(ours - full_canvas_backdrop(shape, seed=2, radial=radial)).max() <= levels


def test_the_shadow_blurred_on_the_jewelry_box_is_the_shadow_blurred_on_the_whole_canvas() -> None:
    rng = np.random.default_rng(4)
    backdrop = rng.integers(0, 256, (2667, 2000, 3), dtype=np.uint8)
    masks = [np.zeros((2667, 2000), bool) for _ in range(5)]
    masks[1][1100:1500, 800:1200] = True  # a ring's box in the middle
    masks[2][:40, -30:] = True  # against the top and right edges
    masks[3][-5:, :] = True  # along the bottom edge, where the shifted mask leaves the canvas
    masks[4][:] = True
    for mask in masks:
        shadowed = classical.soft_shadow(backdrop, mask)
        assert np.array_equal(shadowed, full_canvas_shadow(backdrop, mask))
        assert shadowed is not backdrop


def test_find_jewelry_scores_an_exact_generation_high_and_a_grown_one_low() -> None:
    image, truth = synthetic_ring(1000, 1333)
    exact = classical.composite_generation(image, truth, seed=0)
    grown = classical.composite_generation(image, truth, seed=0, grow_px=20)
    good = imaging.mask_metrics(classical.segment_like_reference(exact, truth), truth)
    bad = imaging.mask_metrics(classical.segment_like_reference(grown, truth), truth)
    assert good.iou >= 0.95 and 0.95 <= good.growth_ratio <= 1.05
    assert bad.growth_ratio > 1.2 and bad.iou < 0.85


def test_busyness_tells_plain_from_cluttered_backgrounds() -> None:
    plain = np.full((800, 600, 3), 240, np.uint8)
    blocks = np.random.default_rng(0).integers(0, 256, (20, 15, 3), dtype=np.uint8)
    cluttered = np.kron(blocks, np.ones((40, 40, 1), np.uint8))  # a room: patches of colour
    assert classical.background_busyness(plain) < 0.05
    assert classical.background_busyness(cluttered) > 0.8


def test_background_removal_keeps_centre_object_on_plain_backdrop() -> None:
    image = np.full((800, 600, 3), (30, 90, 160), np.uint8)
    image[300:500, 200:400] = (230, 200, 40)
    cut, fg = classical.remove_background(image)
    truth = np.zeros((800, 600), bool)
    truth[300:500, 200:400] = True
    assert imaging.mask_metrics(fg, truth).iou > 0.9
    assert tuple(cut[10, 10]) == (255, 255, 255)
