"""The three asset jobs behind the API's start, preprocess and generate endpoints.

They run in-process: a process per step costs ~2.5 s here, while the only parallelism the
pipeline has (Flux beside Gemini) happens inside the `generations` step.
"""

from __future__ import annotations

import dagster as dg

from jewel_dagster.contract import FULL_JOB, GENERATE_JOB, PREPROCESS_JOB, REGENERATE_JOB
from jewel_dagster.defs.assets import (
    ALL_ASSETS,
    GENERATE_ASSETS,
    PREPROCESS_ASSETS,
    flux_metrics,
    generations,
    requests_partitions,
)
from jewel_dagster.settings import get_settings

# JOB_EXECUTOR=multiprocess restores Dagster's stock executor (the benchmarks' baseline).
EXECUTOR = dg.multiprocess_executor if get_settings().job_executor == "multiprocess" else dg.in_process_executor

full_job = dg.define_asset_job(
    FULL_JOB,
    selection=dg.AssetSelection.assets(*ALL_ASSETS),
    partitions_def=requests_partitions,
    executor_def=EXECUTOR,
    description="Photo to generations: the /workflow/start endpoint.",
)
preprocess_job = dg.define_asset_job(
    PREPROCESS_JOB,
    selection=dg.AssetSelection.assets(*PREPROCESS_ASSETS),
    partitions_def=requests_partitions,
    executor_def=EXECUTOR,
    description="Upload, resize, background and jewelry mask: the /workflow/preprocess endpoint.",
)
generate_job = dg.define_asset_job(
    GENERATE_JOB,
    selection=dg.AssetSelection.assets(*GENERATE_ASSETS),
    partitions_def=requests_partitions,
    executor_def=EXECUTOR,
    description="Brush refinement and generations for a preprocessed request: /workflow/generate.",
)

regenerate_job = dg.define_asset_job(
    REGENERATE_JOB,
    selection=dg.AssetSelection.assets(generations, flux_metrics),
    partitions_def=requests_partitions,
    executor_def=EXECUTOR,
    description="New Flux/Gemini images for a request whose check failed or whose generator changed.",
)

ALL_JOBS = [full_job, preprocess_job, generate_job, regenerate_job]
