"""The names the pipeline and the gateway share: steps, progress, assets, jobs, tags.

The gateway imports this module (and the request models in `defs.config`), never the assets:
it names what the pipeline makes without loading it. Kept free of Dagster imports, so the
gateway's status path costs nothing to import.
"""

from __future__ import annotations

from enum import StrEnum


class AssetName(StrEnum):
    """Every asset of the request graph (an output of `resize_to_canvas` and `generations` too)."""

    ORIGINAL_IMAGE = "original_image"
    RESIZED_IMAGE = "resized_image"
    CANVAS_TRANSFORM = "canvas_transform"
    ZOOM_CHECK = "zoom_check"
    BACKGROUND_REMOVED_IMAGE = "background_removed_image"
    JEWELRY_MASK = "jewelry_mask"
    REFINED_MASK = "refined_mask"
    FINAL_MASK = "final_mask"
    FLUX_GENERATION = "flux_generation"
    GEMINI_GENERATION = "gemini_generation"
    FLUX_METRICS = "flux_metrics"


# How each asset is stored (resources/io_manager.py): arrays as PNG, the rest as JSON.
JSON_ASSETS = frozenset({AssetName.CANVAS_TRANSFORM, AssetName.ZOOM_CHECK, AssetName.FLUX_METRICS})
IMAGE_ASSETS = frozenset(AssetName) - JSON_ASSETS
# Also stored as the JPEG a COMPLETED GET answers in base64 (`jpeg_rendition_path`): made once by
# the step that has the pixels, instead of a PNG decode + JPEG encode in the gateway (~0.1 s each).
JPEG_RENDITION_ASSETS = frozenset({AssetName.FLUX_GENERATION, AssetName.GEMINI_GENERATION})

PARTITIONS_NAME = "requests"
CHECK_NAME = "fidelity"  # the asset check on flux_metrics
GPU_POOL = "gpu"  # the Dagster pool of steps that call the GPU services

# Run tags Dagster sets and we read.
PARTITION_TAG = "dagster/partition"
WILL_RETRY_TAG = "dagster/will_retry"
RETRY_NUMBER_TAG = "dagster/retry_number"
CODE_VERSION_TAG = "dagster/code_version"

# Run tags we set.
OWNER_TAG = "jewel/owner"
IDEMPOTENCY_TAG = "jewel/idempotency"
IDEMPOTENCY_REQUEST_TAG = "jewel/idempotency-request"  # which endpoint and body the key was first used with
LAUNCH_TAG = "jewel/launch"
WORKER_TAG = "jewel/worker"  # the Celery worker (name@host) that executed the run, on scale-out
WEBHOOK_TAG = "jewel/webhook"  # "1" on runs that owe a webhook: Dagster filters tags by key and value
WEBHOOK_URL_TAG = "jewel/webhook-url"  # redacted: scheme://host[:port]/path, no credentials, no query
WEBHOOK_KEY_TAG = "jewel/webhook-key"  # names the blob that holds the full URL (gateway.webhooks)
REGENERATE_REASON_TAG = "jewel/regenerate-reason"
REGENERATE_ATTEMPT_TAG = "jewel/regenerate-attempt"
REQUEST_ID_TAG = "jewel/request-id"  # the correlation id of the API call that launched the run (X-Request-ID)

# The Dagster logger that writes a run's log lines as JSON (jewel_dagster/runtime/json_logs.py).
JSON_LOGGER = "json"


def json_logging_run_config() -> dict[str, dict[str, dict[str, object]]]:
    """The run config that turns the JSON logger on for one run. Dagster uses a job's loggers only
    when the run config names them (a partitioned job ignores a job's default config), so each
    launch asks for it: the gateway's, the re-generation sensor's; a UI re-execution inherits it."""
    return {"loggers": {JSON_LOGGER: {}}}


# Which model service each step calls, for metrics and logs; `generations` calls Flux and Gemini.
STEP_SERVICES: dict[str, tuple[str, ...]] = {
    "resize_to_canvas": ("image_manipulator",),
    "zoom_check": ("image_manipulator",),
    "background_removed_image": ("birefnet",),
    "jewelry_mask": ("sam3",),
    "refined_mask": ("a100",),
    "generations": ("flux", "gemini"),
    "flux_metrics": ("sam3",),
}

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

# Asset -> the seed step that makes it: progress follows the materializations a run reports, so a
# run of any subset of the assets (a UI "Materialize selected", a re-execution from failure) is
# placed at the seed steps it actually performs, whatever the Dagster step layout.
SEED_STEP_OF_ASSET: dict[str, str] = {
    AssetName.ORIGINAL_IMAGE: "UPLOADING_IMAGE",
    AssetName.RESIZED_IMAGE: "RESIZING_IMAGE",
    AssetName.CANVAS_TRANSFORM: "RESIZING_IMAGE",
    AssetName.ZOOM_CHECK: "CHECKING_ZOOM",
    AssetName.BACKGROUND_REMOVED_IMAGE: "REMOVING_BACKGROUND",
    AssetName.JEWELRY_MASK: "GENERATING_MASK",
    AssetName.REFINED_MASK: "REFINING_MASK",
    AssetName.FINAL_MASK: "UPLOADING_MASK",
    AssetName.FLUX_GENERATION: "GENERATING_IMAGES",
    AssetName.GEMINI_GENERATION: "GENERATING_IMAGES",
    AssetName.FLUX_METRICS: "GENERATING_IMAGES",
}

FULL_JOB = "jewelry_generation"
PREPROCESS_JOB = "jewelry_preprocess"
GENERATE_JOB = "jewelry_generate"
REGENERATE_JOB = "jewelry_regenerate"
_PREPROCESS_OPS = ["original_image", "resize_to_canvas", "zoom_check", "background_removed_image", "jewelry_mask"]
_GENERATE_OPS = ["refined_mask", "final_mask", "generations", "flux_metrics"]

# Each job's steps in execution order (the in-process executor runs them one at a time).
JOB_OPS: dict[str, list[str]] = {
    FULL_JOB: _PREPROCESS_OPS + _GENERATE_OPS,
    PREPROCESS_JOB: _PREPROCESS_OPS,
    GENERATE_JOB: _GENERATE_OPS,
    REGENERATE_JOB: ["generations", "flux_metrics"],
}
