"""Test images: a real photo shipped by scikit-image, and synthetic jewelry with known truth."""

from __future__ import annotations

import io

import cv2
import numpy as np
import skimage.data
from PIL import Image


def coffee_jpeg() -> bytes:
    """A real 600x400 photo (landscape, so not 3:4) as JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def synthetic_ring(width: int = 2000, height: int = 2667, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A textured gold ring on a noisy grey gradient, and its exact mask."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(90, 160, height)[:, None, None]
    image = np.clip(gradient + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    truth = np.zeros((height, width), np.uint8)
    centre = (width // 2, int(height * 0.48))
    cv2.ellipse(truth, centre, (int(width * 0.21), int(width * 0.15)), 20, 0, 360, 1, -1)
    cv2.ellipse(truth, centre, (int(width * 0.125), int(width * 0.075)), 20, 0, 360, 0, -1)
    mask = truth > 0
    gold = np.array([212, 175, 55], dtype=np.float64)
    image[mask] = np.clip(gold + rng.normal(0, 10, (int(mask.sum()), 3)), 0, 255).astype(np.uint8)
    return image, mask


def to_jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# A click on the ring's band of `synthetic_ring` for any 3:4 size: 0.17 w along the 20° major axis.
RING_CLICK = {"x": 0.66, "y": 0.52, "label": 1}
