"""The reference backend's workflow steps and how our Dagster steps map onto them.

Kept free of Dagster imports: the gateway reads it on every status request.
"""

from __future__ import annotations

# The seed README's "Workflow Steps" table, in order.
STEP_PROGRESS: dict[str, int] = {
    "UPLOADING_IMAGE": 5,
    "RESIZING_IMAGE": 15,
    "CHECKING_ZOOM": 20,
    "REMOVING_BACKGROUND": 30,
    "GENERATING_MASK": 45,
    "REFINING_MASK": 55,
    "UPLOADING_MASK": 60,
    "GENERATING_IMAGES": 70,
    "COMPLETED": 100,
}

# Dagster step (op) key -> the seed step it performs.
SEED_STEP_OF_OP: dict[str, str] = {
    "original_image": "UPLOADING_IMAGE",
    "resize_to_canvas": "RESIZING_IMAGE",
    "zoom_check": "CHECKING_ZOOM",
    "background_removed_image": "REMOVING_BACKGROUND",
    "jewelry_mask": "GENERATING_MASK",
    "refined_mask": "REFINING_MASK",
    "final_mask": "UPLOADING_MASK",
    "generations": "GENERATING_IMAGES",
    "flux_metrics": "GENERATING_IMAGES",
}

FULL_JOB = "jewelry_generation"
PREPROCESS_JOB = "jewelry_preprocess"
GENERATE_JOB = "jewelry_generate"
REGENERATE_JOB = "jewelry_regenerate"
PARTITIONS_NAME = "requests"

_PREPROCESS_OPS = ["original_image", "resize_to_canvas", "zoom_check", "background_removed_image", "jewelry_mask"]
_GENERATE_OPS = ["refined_mask", "final_mask", "generations", "flux_metrics"]

# Each job's steps in execution order (the in-process executor runs them one at a time).
JOB_OPS: dict[str, list[str]] = {
    FULL_JOB: _PREPROCESS_OPS + _GENERATE_OPS,
    PREPROCESS_JOB: _PREPROCESS_OPS,
    GENERATE_JOB: _GENERATE_OPS,
    REGENERATE_JOB: ["generations", "flux_metrics"],
}
