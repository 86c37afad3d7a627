"""Scheduled re-generation: which requests need new images, and the sensor and schedule that ask.

A request needs re-generation when its newest Flux image failed the `fidelity` check (retried
with a new seed, at most `regeneration_max_attempts` times) or was made by an older generator
(its code version differs from the current one). Every run requested says why in its tags.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg

from jewel_dagster.contract import (
    CHECK_NAME,
    CODE_VERSION_TAG,
    PARTITION_TAG,
    PARTITIONS_NAME,
    REGENERATE_ATTEMPT_TAG,
    REGENERATE_REASON_TAG,
    AssetName,
)
from jewel_dagster.defs.assets import generations
from jewel_dagster.defs.jobs import regenerate_job
from jewel_dagster.runtime.check_history import newest_check_failed
from jewel_dagster.settings import PipelineSettings

FLUX = dg.AssetKey(AssetName.FLUX_GENERATION)
FIDELITY = dg.AssetCheckKey(dg.AssetKey(AssetName.FLUX_METRICS), CHECK_NAME)
# A run in one of these may still change the request's images: the sensor leaves it alone.
UNFINISHED_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
    dg.DagsterRunStatus.SUSPENDED,
]
SCAN_LIMIT = 500  # newest partitions looked at per tick: bounds a tick's cost


def current_flux_version() -> str:
    return generations.code_versions_by_key[FLUX] or ""


def _regeneration_request(partition: str, reason: str, attempt: int, key: str) -> dg.RunRequest:
    return dg.RunRequest(
        partition_key=partition,
        run_key=f"{partition}:{key}",
        run_config={"ops": {generations.node_def.name: {"config": {"seed": attempt}}}},
        tags={REGENERATE_REASON_TAG: reason, REGENERATE_ATTEMPT_TAG: str(attempt)},
    )


def regeneration_requests(
    instance: dg.DagsterInstance, flux_version: str, max_attempts: int
) -> Iterator[dg.RunRequest]:
    partitions = instance.get_dynamic_partitions(PARTITIONS_NAME)[-SCAN_LIMIT:]
    for partition in partitions:
        busy = instance.get_runs_count(
            dg.RunsFilter(tags={PARTITION_TAG: partition}, statuses=UNFINISHED_RUN_STATUSES)
        )
        if busy:
            continue  # its running run may fix it; look again next tick
        latest = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=FLUX, asset_partitions=[partition]), limit=1
        ).records
        if not latest:
            continue  # never generated (preprocess only, or failed before): nothing to redo
        made_by = (latest[0].event_log_entry.tags or {}).get(CODE_VERSION_TAG)
        if made_by != flux_version:
            yield _regeneration_request(partition, "stale", 0, f"stale:{flux_version}")
            continue
        if not newest_check_failed(instance, FIDELITY, partition):
            continue
        retried = {PARTITION_TAG: partition, REGENERATE_REASON_TAG: "failed-check"}
        attempts = instance.get_runs_count(dg.RunsFilter(tags=retried))
        if attempts < max_attempts:
            yield _regeneration_request(partition, "failed-check", attempts + 1, f"failed-check:{attempts + 1}")


def build_regeneration_automation(settings: PipelineSettings) -> tuple[dg.SensorDefinition, dg.ScheduleDefinition]:
    @dg.sensor(
        job=regenerate_job,
        minimum_interval_seconds=settings.regeneration_sensor_interval_seconds,
        default_status=(
            dg.DefaultSensorStatus.RUNNING if settings.regeneration_sensor_enabled else dg.DefaultSensorStatus.STOPPED
        ),
        description="Re-generates requests whose fidelity check failed, or whose generator changed.",
    )
    def regeneration_sensor(context: dg.SensorEvaluationContext) -> Iterator[dg.RunRequest]:
        yield from regeneration_requests(context.instance, current_flux_version(), settings.regeneration_max_attempts)

    @dg.schedule(
        job=regenerate_job,
        cron_schedule=settings.regeneration_cron,
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if settings.regeneration_schedule_enabled
            else dg.DefaultScheduleStatus.STOPPED
        ),
        description="The same sweep as the sensor, on a fixed timetable (off by default).",
    )
    def regeneration_schedule(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
        yield from regeneration_requests(context.instance, current_flux_version(), settings.regeneration_max_attempts)

    return regeneration_sensor, regeneration_schedule
