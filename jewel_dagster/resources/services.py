"""The ML services the pipeline calls, as abstract Dagster resources.

Assets annotate these abstract types; `resources.py` picks an implementation: the in-process
*local* classical-vision backends (embedded default) or HTTP clients for the real services.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from jewel_dagster.vision.classical import PixelPoint
from jewel_dagster.vision.imaging import CanvasStroke, CanvasTransform, Mask, RGBImage


@dataclass(frozen=True)
class ZoomCheck:
    """Whether the photo needs its background removed, and the score that decided it."""

    needs_background_removal: bool
    score: float
    threshold: float

    def to_dict(self) -> dict[str, float | bool]:
        return {
            "needs_background_removal": self.needs_background_removal,
            "score": self.score,
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class Generation:
    """A generator's answer: an image, or None with the reason (Gemini may refuse)."""

    image: RGBImage | None
    model: str
    reason: str | None = None


class ServiceBackend(dg.ConfigurableResource, ABC):
    @property
    @abstractmethod
    def backend_name(self) -> str:
        """Shown in asset metadata and /health: which implementation did the work."""


class ImageManipulator(ServiceBackend, ABC):
    @abstractmethod
    def resize_to_canvas(self, image: RGBImage) -> tuple[RGBImage, CanvasTransform]: ...

    @abstractmethod
    def check_zoom(self, image: RGBImage) -> ZoomCheck: ...


class BackgroundRemover(ServiceBackend, ABC):
    @abstractmethod
    def remove_background(self, image: RGBImage) -> RGBImage: ...


class Segmenter(ServiceBackend, ABC):
    @abstractmethod
    def segment(self, image: RGBImage, points: Sequence[PixelPoint]) -> Mask:
        """The object under the positive clicks, as a mask of the image's size."""


class MaskRefiner(ServiceBackend, ABC):
    @abstractmethod
    def refine(self, mask: Mask, strokes: Sequence[CanvasStroke]) -> Mask: ...


class ImageGenerator(ServiceBackend, ABC):
    @abstractmethod
    def generate(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Generation:
        """A new image that keeps the masked jewelry pixels."""
