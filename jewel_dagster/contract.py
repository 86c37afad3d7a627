"""The names the pipeline and the gateway share: steps, progress, assets, jobs, tags.

The gateway imports this module (and the request models in `request_inputs`), never the assets:
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
WEBHOOK_EVENTS_TAG = "jewel/webhook-events"  # the caller's webhookEvents, comma-separated; absent = final ones
WEBHOOK_LIVE_TAG = "jewel/webhook-live"  # "1" when started or progress events are wanted: running runs to watch
REGENERATE_REASON_TAG = "jewel/regenerate-reason"
REGENERATE_ATTEMPT_TAG = "jewel/regenerate-attempt"
REQUEST_ID_TAG = "jewel/request-id"  # the correlation id of the API call that launched the run (X-Request-ID)

# The Dagster logger that writes a run's log lines as JSON (jewel_dagster/runtime/loggers/json_logs.py).
JSON_LOGGER = "json"


def json_logging_run_config() -> dict[str, dict[str, dict[str, object]]]:
    """The run config that turns the JSON logger on for one run. Dagster uses a job's loggers only
    when the run config names them (a partitioned job ignores a job's default config), so each
    launch asks for it: the gateway's, the re-generation sensor's; a UI re-execution inherits it."""
    return {"loggers": {JSON_LOGGER: {}}}


# The Dagster steps (ops) of the request graph: each materializes several assets in order, in
# memory, so a full request is three steps (defs/assets.py says why this grouping).
PREPARE_OP = "prepare_canvas"  # original_image, resized_image, canvas_transform, zoom_check (CPU)
SEGMENT_OP = "segment_jewelry"  # background_removed_image, jewelry_mask (GPU pool)
# refined_mask, final_mask, flux_generation, gemini_generation, flux_metrics + check (GPU pool)
GENERATE_OP = "generate_images"

# Asset -> the step (op) that materializes it.
OP_OF_ASSET: dict[str, str] = {
    AssetName.ORIGINAL_IMAGE: PREPARE_OP,
    AssetName.RESIZED_IMAGE: PREPARE_OP,
    AssetName.CANVAS_TRANSFORM: PREPARE_OP,
    AssetName.ZOOM_CHECK: PREPARE_OP,
    AssetName.BACKGROUND_REMOVED_IMAGE: SEGMENT_OP,
    AssetName.JEWELRY_MASK: SEGMENT_OP,
    AssetName.REFINED_MASK: GENERATE_OP,
    AssetName.FINAL_MASK: GENERATE_OP,
    AssetName.FLUX_GENERATION: GENERATE_OP,
    AssetName.GEMINI_GENERATION: GENERATE_OP,
    AssetName.FLUX_METRICS: GENERATE_OP,
}

# Which model services each step calls, for metrics and logs.
STEP_SERVICES: dict[str, tuple[str, ...]] = {
    PREPARE_OP: ("image_manipulator",),
    SEGMENT_OP: ("birefnet", "sam3"),
    GENERATE_OP: ("flux", "gemini", "sam3", "a100"),
}

# How a step failure's message names the service that failed (case-sensitive): the HTTP clients
# start theirs with their class name ("MaskRefiner (http://.../a100/refine) answered 503"), the
# steps' own refusals name the model ("Flux returned no image"). Not the services' URLs: the
# reference server's Flux path is /a100/generate. A failure that names none of a step's services
# is the request refused (an empty mask, bad strokes), not a model call's error.
SERVICE_NAMES_IN_ERRORS: dict[str, tuple[str, ...]] = {
    "image_manipulator": ("ImageManipulator",),
    "birefnet": ("BackgroundRemover",),
    "sam3": ("Segmenter", "SAM3"),
    "a100": ("MaskRefiner",),
    "flux": ("FluxGenerator", "Flux"),
    "gemini": ("Gemini",),
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

# Dagster step (op) key -> the first seed step it performs (a failed step names it).
SEED_STEP_OF_OP: dict[str, str] = {
    PREPARE_OP: "UPLOADING_IMAGE",
    SEGMENT_OP: "REMOVING_BACKGROUND",
    GENERATE_OP: "REFINING_MASK",
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
_PREPROCESS_OPS = [PREPARE_OP, SEGMENT_OP]

# Each job's steps in execution order (the in-process executor runs them one at a time). The
# re-generation job runs `generate_images` too, selecting only the generations and their metrics.
JOB_OPS: dict[str, list[str]] = {
    FULL_JOB: [*_PREPROCESS_OPS, GENERATE_OP],
    PREPROCESS_JOB: _PREPROCESS_OPS,
    GENERATE_JOB: [GENERATE_OP],
    REGENERATE_JOB: [GENERATE_OP],
}

# A request's inputs come in sections named like the assets they shape (one `Config` each, in
# defs/config.py); a step's run config holds the sections of its assets. "generations" (seed,
# prompt) is the Flux and Gemini section.
GENERATIONS_CONFIG = "generations"
OP_OF_CONFIG: dict[str, str] = {
    AssetName.ORIGINAL_IMAGE: PREPARE_OP,
    AssetName.BACKGROUND_REMOVED_IMAGE: SEGMENT_OP,
    AssetName.JEWELRY_MASK: SEGMENT_OP,
    AssetName.REFINED_MASK: GENERATE_OP,
    GENERATIONS_CONFIG: GENERATE_OP,
}


def run_config_ops(sections: dict[str, dict[str, object]]) -> dict[str, dict[str, dict[str, object]]]:
    """The run config's `ops` for input sections keyed by asset ({"jewelry_mask": {"points": ...}}):
    grouped under the step that uses them ({"segment_jewelry": {"config": {"jewelry_mask": ...}}}).
    Callers name assets, never steps, so the step layout can change without touching them."""
    ops: dict[str, dict[str, dict[str, object]]] = {}
    for section, config in sections.items():
        ops.setdefault(OP_OF_CONFIG[section], {"config": {}})["config"][str(section)] = config
    return ops
