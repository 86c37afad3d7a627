"""The code location: every asset, job, resource, sensor and schedule of jewel-dagster."""

from __future__ import annotations

import dagster as dg

from jewel_dagster import tracing
from jewel_dagster.contract import JSON_LOGGER
from jewel_dagster.defs.assets import ALL_ASSETS
from jewel_dagster.defs.jobs import ALL_JOBS
from jewel_dagster.defs.regeneration import build_regeneration_automation
from jewel_dagster.defs.retention import build_retention
from jewel_dagster.defs.run_traces import build_run_trace_sensors
from jewel_dagster.resources.selection import build_resources
from jewel_dagster.runtime.loggers.json_logs import json_logger
from jewel_dagster.settings import get_settings

_settings = get_settings()
# Spans export one by one here: run workers (forked from this process) may end through os._exit.
tracing.configure_tracing("jewel-pipeline", batch=False)
regeneration_sensor, regeneration_schedule = build_regeneration_automation(_settings)
retention_job, retention_schedule = build_retention(_settings)

defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[*ALL_JOBS, retention_job],
    sensors=[regeneration_sensor, *build_run_trace_sensors(_settings.run_trace_sensor_interval_seconds)],
    schedules=[regeneration_schedule, retention_schedule],
    resources=build_resources(_settings),
    # JSON lines from the run workers, for runs whose run config names it (LOG_FORMAT=json).
    loggers={JSON_LOGGER: json_logger},
)
