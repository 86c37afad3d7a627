"""The code location: every asset, job and resource of jewel-dagster."""

from __future__ import annotations

import dagster as dg

from jewel_dagster.assets import ALL_ASSETS
from jewel_dagster.jobs import ALL_JOBS
from jewel_dagster.resources import build_resources
from jewel_dagster.settings import get_settings

defs = dg.Definitions(assets=ALL_ASSETS, jobs=ALL_JOBS, resources=build_resources(get_settings()))
