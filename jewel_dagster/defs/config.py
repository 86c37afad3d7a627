"""Per-request inputs, one Dagster `Config` per asset that takes input.

Images and brush strokes are never in here: run config is stored in Dagster's event log, so
they travel as blob URIs (strokes as a JSON list of `request_inputs.BrushStroke`, validated
again on load). Coordinates are normalised to [0, 1] on the image the person clicked on.

`MaskPoint` is the gateway's plain request model (`jewel_dagster.request_inputs`, free of
Dagster) made a Dagster `Config`: one definition, so what the API accepts is what a run accepts.
"""

from typing import Literal

import dagster as dg
from pydantic import Field

from jewel_dagster import request_inputs


class MaskPoint(request_inputs.MaskPoint, dg.Config):
    """A mask click in run config: the request model's fields and checks, as Dagster config."""


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
    strokes_uri: str | None = Field(
        default=None,
        description="Blob URI of the request's brush strokes (JSON, a list of BrushStroke); none: no strokes.",
    )
    points_space: Literal["photo", "canvas"] = Field(
        default="photo",
        description=(
            "What the stroke points are normalised on: photo, the uploaded photo (/workflow/start), or "
            "canvas, the 2000x2667 canvas image a preprocess returned as imageUri (/workflow/generate)."
        ),
    )


class GenerationConfig(dg.Config):
    seed: int = 0
    prompt: str = "the jewelry on a clean studio backdrop, soft light"


# One config per step (contract.run_config_ops builds them from the sections above): a step
# materializes several assets, and Dagster's config is per step. Every section is optional, so
# a UI run of some of a step's assets asks only for what those need.
class PrepareCanvasConfig(dg.Config):
    original_image: OriginalImageConfig | None = Field(
        default=None, description="Needed only when the run materializes original_image."
    )


class SegmentJewelryConfig(dg.Config):
    background_removed_image: BackgroundConfig = Field(default_factory=BackgroundConfig)
    jewelry_mask: JewelryMaskConfig = Field(default_factory=JewelryMaskConfig)


class GenerateImagesConfig(dg.Config):
    refined_mask: RefineConfig = Field(default_factory=RefineConfig)
    generations: GenerationConfig = Field(default_factory=GenerationConfig)
