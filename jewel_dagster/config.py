"""Per-request inputs, one Dagster `Config` per asset that takes input.

Images are never in here: run config is stored in Dagster's event log, so images travel as
blob URIs. Coordinates are normalised to [0, 1] on the image the person clicked on.
"""

from typing import Literal

import dagster as dg
from pydantic import Field


class MaskPoint(dg.Config):
    x: float = Field(ge=0.0, le=1.0)
    y: float = Field(ge=0.0, le=1.0)
    label: int = Field(default=1, ge=0, le=1, description="1 = on the jewelry, 0 = not.")


class StrokePoint(dg.Config):
    x: float = Field(ge=0.0, le=1.0)
    y: float = Field(ge=0.0, le=1.0)


class BrushStroke(dg.Config):
    points: list[StrokePoint]
    mode: Literal["add", "remove"]
    size: float = Field(gt=0.0, description="Brush diameter in pixels of the 2000x2667 canvas.")


class OriginalImageConfig(dg.Config):
    image_uri: str = Field(description="Blob URI of the uploaded photo.")


class BackgroundConfig(dg.Config):
    mode: Literal["auto", "remove", "keep"] = Field(
        default="auto", description="auto: remove the background when the zoom check says so."
    )


class JewelryMaskConfig(dg.Config):
    points: list[MaskPoint] = Field(default_factory=list)
    mask_uri: str | None = Field(
        default=None, description="Use this stored mask instead of segmenting from the points."
    )


class RefineConfig(dg.Config):
    brush_strokes: list[BrushStroke] = Field(default_factory=list)


class GenerationConfig(dg.Config):
    seed: int = 0
    prompt: str = "the jewelry on a clean studio backdrop, soft light"
