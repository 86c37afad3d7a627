"""The three asset jobs behind the API's start, preprocess and generate endpoints.

They run in-process: a process per step costs ~2.5 s here, while the only parallelism the
pipeline has (Flux beside Gemini) happens inside the `generate_images` step.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from jewel_dagster.contract import FULL_JOB, GENERATE_JOB, PREPROCESS_JOB, REGENERATE_JOB, AssetName
from jewel_dagster.defs.assets import ALL_ASSETS, GENERATE_ASSETS, PREPROCESS_ASSETS
from jewel_dagster.settings import get_settings

# JOB_EXECUTOR=multiprocess restores Dagster's stock executor (the benchmarks' baseline).
EXECUTOR = dg.multiprocess_executor if get_settings().job_executor == "multiprocess" else dg.in_process_executor


def _request_job(
    name: str, assets: Sequence[dg.AssetsDefinition] | Sequence[str], description: str
) -> dg.UnresolvedAssetJobDefinition:
    """A job over some of the request assets (with their checks); its partitions (`requests`)
    come from them."""
    return dg.define_asset_job(
        name, selection=dg.AssetSelection.assets(*assets), executor_def=EXECUTOR, description=description
    )


full_job = _request_job(FULL_JOB, ALL_ASSETS, "Photo to generations: the /workflow/start endpoint.")
preprocess_job = _request_job(
    PREPROCESS_JOB, PREPROCESS_ASSETS, "Upload, resize, background and jewelry mask: the /workflow/preprocess endpoint."
)
generate_job = _request_job(
    GENERATE_JOB, GENERATE_ASSETS, "Brush strokes, final mask and generations: the /workflow/generate endpoint."
)
regenerate_job = _request_job(
    REGENERATE_JOB,
    [AssetName.FLUX_GENERATION, AssetName.GEMINI_GENERATION, AssetName.FLUX_METRICS],
    "New Flux/Gemini images for a request whose check failed or whose generator changed.",
)

ALL_JOBS = [full_job, preprocess_job, generate_job, regenerate_job]
