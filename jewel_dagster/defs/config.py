"""Per-request inputs, one Dagster `Config` per asset that takes input.

Images are never in here: run config is stored in Dagster's event log, so images travel as
blob URIs. Coordinates are normalised to [0, 1] on the image the person clicked on.

`MaskPoint`, `StrokePoint` and `BrushStroke` are also the gateway's request models (in
`gateway.schemas`): one definition, so what the API accepts is what a run accepts. They forbid
unknown fields and take `label` as a strict integer, as the API promises; Dagster's config
system cannot express `Literal[0, 1]`, so the label is an integer bounded to 0..1.
"""

from typing import Literal

import dagster as dg
from pydantic import ConfigDict, Field, field_validator

MAX_STROKE_POINTS = 10_000  # points in one brush stroke
MAX_BRUSH_SIZE = 2667.0  # canvas pixels: the canvas's longer side


class MaskPoint(dg.Config):
    model_config = ConfigDict(extra="forbid")
    x: float = Field(ge=0.0, le=1.0, description="Normalised x on the uploaded image.")
    y: float = Field(ge=0.0, le=1.0, description="Normalised y on the uploaded image.")
    label: int = Field(default=1, ge=0, le=1, strict=True, description="1 = on the jewelry, 0 = not.")

    @field_validator("label", mode="before")
    @classmethod
    def zero_or_one(cls, value: object) -> object:
        """The message a frontend shows: "0 or 1", not pydantic's bounds."""
        if type(value) is not int or value not in (0, 1):
            raise ValueError("label should be 0 or 1")
        return value


class StrokePoint(dg.Config):
    model_config = ConfigDict(extra="forbid")
    x: float = Field(ge=0.0, le=1.0)
    y: float = Field(ge=0.0, le=1.0)


class BrushStroke(dg.Config):
    model_config = ConfigDict(extra="forbid")
    points: list[StrokePoint] = Field(min_length=1, max_length=MAX_STROKE_POINTS)
    mode: Literal["add", "remove"]
    size: float = Field(gt=0.0, le=MAX_BRUSH_SIZE, description="Brush diameter in pixels of the 2000x2667 canvas.")


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
