"""What one request carries besides its image: mask points and brush strokes, as plain pydantic.

The gateway validates API bodies with these models and the pipeline's run config derives from
them (`defs.config.MaskPoint` is this `MaskPoint` plus `dg.Config`), so what the API accepts is
what a run accepts, and importing them costs no Dagster: the gateway's request path stays free
of it (tests/unit/test_architecture.py checks that `gateway.schemas` loads no `dagster`).
The stored strokes blob `refined_mask` loads (in `generate_images`) is validated by the same
`BRUSH_STROKES`.

They forbid unknown fields and take `label` as a strict integer, as the API promises; Dagster's
config system cannot express `Literal[0, 1]`, so the label is an integer bounded to 0..1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from pydantic_core import PydanticCustomError

# Brush-stroke limits: what one request may ask the rasteriser to paint. A stroke's cost is its
# painted area, so besides counting points and strokes the whole request's painted area is
# bounded before any work starts (see `painted_area`).
MAX_STROKES = 200  # strokes in one request
MAX_STROKE_POINTS = 10_000  # points in one brush stroke
MAX_TOTAL_STROKE_POINTS = 20_000  # points over all strokes of one request
MAX_BRUSH_SIZE = 300.0  # canvas pixels; the web page's slider goes 8..300
# 2e9 canvas pixels = 375 canvases (2000x2667) of segment area, ~0.2 s of OpenCV painting on
# this machine (~10 billion segment pixels a second). A person painting with the web page (a
# point per pointer move, ~200 points a stroke) stays below it: 50 such strokes at the largest
# brush (300) bound to ~0.92e9; at a typical 60 px, ~0.04e9.
MAX_PAINTED_AREA = 2_000_000_000
STROKE_CANVAS = (2000, 2667)  # the canvas strokes are painted on (imaging.CANVAS_WIDTH/HEIGHT)


class MaskPoint(BaseModel):
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


class StrokePoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: float = Field(ge=0.0, le=1.0)
    y: float = Field(ge=0.0, le=1.0)


class BrushStroke(BaseModel):
    model_config = ConfigDict(extra="forbid")
    points: list[StrokePoint] = Field(min_length=1, max_length=MAX_STROKE_POINTS)
    mode: Literal["add", "remove"]
    size: float = Field(gt=0.0, le=MAX_BRUSH_SIZE, description="Brush diameter in pixels of the 2000x2667 canvas.")


def painted_area(stroke: BrushStroke) -> float:
    """Upper bound of the canvas pixels painting ``stroke`` touches: sum over its segments of
    (length + size) x size, lengths measured on the whole canvas (a photo's content is never
    larger than the canvas, so normalised points map to at most these distances)."""
    width, height = STROKE_CANVAS
    size = max(stroke.size, 1.0)  # a line is painted at least one pixel wide
    points = stroke.points
    if len(points) == 1:
        return size * size
    total = 0.0
    for a, b in zip(points[:-1], points[1:], strict=True):
        total += (math.hypot((b.x - a.x) * width, (b.y - a.y) * height) + size) * size
    return total


def check_stroke_budget(strokes: Sequence[BrushStroke]) -> Sequence[BrushStroke]:
    """The per-request limits on brush strokes (count, points, painted area), with messages a
    frontend can show."""
    if len(strokes) > MAX_STROKES:
        raise PydanticCustomError("too_many_strokes", "at most {limit} strokes", {"limit": MAX_STROKES})
    points = sum(len(s.points) for s in strokes)
    if points > MAX_TOTAL_STROKE_POINTS:
        raise PydanticCustomError(
            "too_many_stroke_points",
            "the strokes have {points} points in all; at most {limit} are allowed: simplify or send fewer strokes",
            {"points": points, "limit": MAX_TOTAL_STROKE_POINTS},
        )
    area = sum(painted_area(s) for s in strokes)
    if area > MAX_PAINTED_AREA:
        raise PydanticCustomError(
            "strokes_too_large",
            "the strokes would paint about {area} million canvas pixels (segment length plus brush size, times "
            "brush size, summed); at most {limit} million are allowed: use a smaller brush, fewer or shorter strokes",
            {"area": f"{area / 1e6:,.0f}", "limit": f"{MAX_PAINTED_AREA / 1e6:,.0f}"},
        )
    return strokes


# A request's brush strokes: the gateway's `brushStrokes` and the stored strokes blob that
# `refined_mask` loads are both validated by this one type.
BrushStrokes = Annotated[list[BrushStroke], Field(max_length=MAX_STROKES), AfterValidator(check_stroke_budget)]
BRUSH_STROKES = TypeAdapter(BrushStrokes)
