"""The mask kernels (speck removal, the metrics points) work on the mask's content box, not the
whole canvas, and answer exactly what the full-canvas versions answered.

The references below are the full-canvas implementations as they were before the box: the
distance transform, the component labels and the scan order must all come out the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pytest

from jewel_dagster.vision import imaging


def _reference_remove_specks(mask: np.ndarray, min_area: int) -> np.ndarray:
    if min_area <= 1 or not mask.any():
        return mask.copy()
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[labels]


def _reference_interior_points(
    mask: np.ndarray, limit: int = 8, covered: Sequence[tuple[float, float]] = ()
) -> list[tuple[float, float]]:
    if not mask.any():
        return []
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    h, w = mask.shape
    taken = {int(labels[int(y), int(x)]) for x, y in covered if 0 <= x < w and 0 <= y < h}
    order = sorted((i for i in range(1, count) if i not in taken), key=lambda i: -int(stats[i, cv2.CC_STAT_AREA]))
    distance = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    points = []
    for index in order[:limit]:
        inside = np.where(labels == index, distance, -1.0)
        y, x = np.unravel_index(int(np.argmax(inside)), inside.shape)
        points.append((float(x) + 0.5, float(y) + 0.5))
    return points


def _reference_spread_points(
    mask: np.ndarray, spacing: int = 120, depth: float = 12.0, limit: int = 32
) -> list[tuple[float, float]]:
    distance = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    if not mask.any():
        return []
    ys, xs = np.nonzero(distance > max(depth, 0.5 * float(distance.max())))
    cells: dict[tuple[int, int], tuple[float, float]] = {}
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        cells.setdefault((x // spacing, y // spacing), (x + 0.5, y + 0.5))
    points = list(cells.values())
    step = max(1, -(-len(points) // limit))
    return points[::step][:limit]


def _random_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Discs, rectangles and specks, some touching the image's edges, some irregular."""
    canvas = np.zeros(shape, np.uint8)
    h, w = shape
    for _ in range(int(rng.integers(0, 6))):
        centre = (int(rng.integers(-20, w + 20)), int(rng.integers(-20, h + 20)))
        cv2.circle(canvas, centre, int(rng.integers(1, 60)), 1, -1)
    for _ in range(int(rng.integers(0, 3))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        canvas[y : y + int(rng.integers(1, 80)), x : x + int(rng.integers(1, 80))] = 1
    if rng.random() < 0.5:  # noise: specks and ragged edges
        canvas[rng.random(shape) < 0.002] = 1
        canvas[rng.random(shape) < 0.01] = 0
    return canvas.astype(bool)


@pytest.mark.parametrize("seed", range(40))
def test_box_kernels_answer_what_the_full_canvas_answered(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = _random_mask(rng, (int(rng.integers(40, 400)), int(rng.integers(40, 400))))
    h, w = mask.shape
    covered = [(float(rng.uniform(-5, w + 5)), float(rng.uniform(-5, h + 5))) for _ in range(3)]
    covered += [(float(x) + 0.5, float(y) + 0.5) for y, x in np.argwhere(mask)[:2]]  # on the mask
    for area in (1, 5, 64):
        assert np.array_equal(imaging.remove_specks(mask, area), _reference_remove_specks(mask, area))
    assert imaging.interior_points(mask, covered=covered) == _reference_interior_points(mask, covered=covered)
    assert imaging.interior_points(mask, limit=2) == _reference_interior_points(mask, limit=2)
    for spacing, depth in ((120, 12.0), (16, 1.0), (7, 0.0)):
        assert imaging.spread_points(mask, spacing, depth) == _reference_spread_points(mask, spacing, depth)


def test_kernels_only_see_the_masks_box(monkeypatch: pytest.MonkeyPatch) -> None:
    """A disc on the canvas: the labelling and the distance transform get its box (plus a
    margin), not the 5.3-megapixel canvas (which cost ~115 ms a request)."""
    seen: list[tuple[int, ...]] = []
    for name in ("connectedComponentsWithStats", "distanceTransform"):
        original = getattr(cv2, name)

        def spy(image: np.ndarray, *args: object, _original=original, **kwargs: object) -> object:  # type: ignore[no-untyped-def]
            seen.append(image.shape)
            return _original(image, *args, **kwargs)

        monkeypatch.setattr(cv2, name, spy)
    mask = np.zeros((imaging.CANVAS_HEIGHT, imaging.CANVAS_WIDTH), bool)
    cv2.circle(mask.view(np.uint8), (500, 1200), 120, 1, -1)
    imaging.remove_specks(mask, 64)
    imaging.interior_points(mask)
    imaging.spread_points(mask)
    assert len(seen) == 4  # remove_specks 1, interior_points 2, spread_points 1
    assert all(shape[0] <= 250 and shape[1] <= 250 for shape in seen), seen
