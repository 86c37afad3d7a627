"""In-process *local* backends: classical CPU image processing standing in for the ML services.

They really do the work (see `classical.py`), deterministically, so the whole pipeline
runs on a fresh machine. Their names say "local" everywhere they are shown.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from jewel_dagster.resources.services import (
    BackgroundRemover,
    Generation,
    ImageGenerator,
    ImageManipulator,
    MaskRefiner,
    Segmenter,
    ZoomCheck,
)
from jewel_dagster.vision import classical, imaging
from jewel_dagster.vision.classical import PixelPoint
from jewel_dagster.vision.imaging import CanvasStroke, CanvasTransform, Mask, RGBImage


class LocalImageManipulator(ImageManipulator):
    """Letterbox resize and a frame-clutter score instead of the image-manipulator service."""

    zoom_threshold: float = 0.25

    @property
    def backend_name(self) -> str:
        return "local-classical"

    def resize_to_canvas(self, image: RGBImage) -> tuple[RGBImage, CanvasTransform]:
        return imaging.fit_to_canvas(image)

    def check_zoom(self, image: RGBImage) -> ZoomCheck:
        score = classical.background_busyness(image)
        return ZoomCheck(score > self.zoom_threshold, round(score, 4), self.zoom_threshold)


class LocalBackgroundRemover(BackgroundRemover):
    """Border-seeded GrabCut instead of BiRefNet."""

    @property
    def backend_name(self) -> str:
        return "local-grabcut"

    def remove_background(self, image: RGBImage) -> RGBImage:
        cut_out, _ = classical.remove_background(image)
        return cut_out


class LocalSegmenter(Segmenter):
    """Flood fill + GrabCut from the clicks instead of SAM3."""

    @property
    def backend_name(self) -> str:
        return "local-grabcut"

    def segment(self, image: RGBImage, points: Sequence[PixelPoint]) -> Mask:
        return classical.segment_from_points(image, points)


class LocalMaskRefiner(MaskRefiner):
    """Brush-stroke rasterising (OpenCV, within a pixel of exact) instead of the A100 server's refinement.

    ``busy_seconds`` (tests only) first keeps a core busy inside one C call: a step to cancel
    that the cancel's interrupt cannot stop (`hold_a_core_in_c`).
    """

    busy_seconds: float = 0.0

    @property
    def backend_name(self) -> str:
        return "local-brush"

    def refine(self, mask: Mask, strokes: Sequence[CanvasStroke]) -> Mask:
        if self.busy_seconds > 0:
            hold_a_core_in_c(self.busy_seconds)
        return imaging.apply_strokes(mask, strokes)


def hold_a_core_in_c(seconds: float) -> None:
    """Keep one core busy for about `seconds` inside a single numpy call (an integer
    convolution: a plain C loop, one thread, a few MB), as a long OpenCV or numpy call does.

    Python runs signal handlers only between bytecodes, so the SIGINT of a Dagster cancel waits
    until the call returns: what the warm code server's kill after `CANCEL_GRACE_SECONDS` is for.
    A busy loop of Python calls would be interrupted between two of them.
    """
    probe = np.ones(4000, dtype=np.int64)
    started = time.perf_counter()
    np.convolve(probe, probe)
    per_product = max(time.perf_counter() - started, 1e-6) / probe.size**2
    n = max(probe.size, int((seconds / per_product) ** 0.5))  # n * n products: about `seconds`
    ones = np.ones(n, dtype=np.int64)
    np.convolve(ones, ones)


class LocalStudioGenerator(ImageGenerator):
    """Composites the untouched jewelry onto a rendered studio backdrop (no diffusion model).

    ``grow_px`` makes it bleed the jewelry into the backdrop, a known-bad generation for
    exercising the quality checks.
    """

    style: str = "sweep"
    grow_px: int = 0
    grow_seeds: list[int] | None = None  # seeds the bleed applies to; None = all

    @property
    def backend_name(self) -> str:
        return f"local-studio-{self.style}"

    def generate(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Generation:
        bleeds = self.grow_seeds is None or seed in self.grow_seeds
        out = classical.composite_generation(
            image, mask, seed=seed, radial=self.style == "radial", grow_px=self.grow_px if bleeds else 0
        )
        return Generation(image=out, model=self.backend_name)


class DisabledGenerator(ImageGenerator):
    """No generator configured: the result is null, with the reason, and the run succeeds."""

    reason: str = "generator not configured"

    @property
    def backend_name(self) -> str:
        return "disabled"

    def generate(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Generation:
        return Generation(image=None, model="disabled", reason=self.reason)


# --------------------------------------------------------------------------- instant stand-ins
# For load tests and orchestration benchmarks (LOCAL_BACKENDS=instant): they do the least work
# that still yields valid artifacts, so what is measured is the orchestration, not the vision.


class InstantBackgroundRemover(BackgroundRemover):
    """Passes the image through."""

    call_seconds: float = 0.0  # LOCAL_INSTANT_CALL_SECONDS: a step that takes time, asleep

    @property
    def backend_name(self) -> str:
        return "instant"

    def remove_background(self, image: RGBImage) -> RGBImage:
        time.sleep(self.call_seconds)
        return image


class InstantSegmenter(Segmenter):
    """A disc around each positive click."""

    radius: int = 120
    call_seconds: float = 0.0  # LOCAL_INSTANT_CALL_SECONDS

    @property
    def backend_name(self) -> str:
        return "instant"

    def segment(self, image: RGBImage, points: Sequence[PixelPoint]) -> Mask:
        time.sleep(self.call_seconds)
        strokes = [CanvasStroke(((p.x, p.y),), "add", 2.0 * self.radius) for p in points if p.label == 1]
        return imaging.apply_strokes(np.zeros(image.shape[:2], dtype=bool), strokes)


class InstantGenerator(ImageGenerator):
    """A flat grey backdrop with the jewelry pixels pasted in."""

    call_seconds: float = 0.0  # LOCAL_INSTANT_CALL_SECONDS

    @property
    def backend_name(self) -> str:
        return "instant"

    def generate(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Generation:
        time.sleep(self.call_seconds)
        out = np.full_like(image, 200)
        out[mask] = image[mask]
        return Generation(image=out, model="instant")
