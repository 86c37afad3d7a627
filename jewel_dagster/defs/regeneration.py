"""Scheduled re-generation: which requests need new images, and the sensor and schedule that ask.

A request needs re-generation when its newest Flux image failed the `fidelity` check (retried
with a new seed, at most `regeneration_max_attempts` times) or was made by an older generator
(its code version differs from the current one). Every run requested says why in its tags.

It has to scale to 100,000s of requests (issue 17). The sensor walks the `requests` partitions
with a cursor, one page (`REGENERATION_PAGE_SIZE`) per tick, oldest first, and wraps around at
the end: every retained request is looked at again every `partitions / page` ticks. A page costs
a fixed number of batched queries, whatever its size: its busy partitions, the newest Flux
materialization of each, the newest `fidelity` result of each, and the attempts of the failed
ones. A tick requests at most `REGENERATION_MAX_RUNS_PER_TICK` runs; when a page needs more, the
cursor moves to just past the last partition requested, so the next tick goes on from there (it
used to stay on the page, and a page whose runs Dagster skipped, their run keys used before, was
walked for ever).

Run keys carry the attempt: `<partition>:stale:<version>:<n>`, `<partition>:failed-check:<n>`.
Dagster never launches a run key twice, so a key without the attempt left a partition whose stale
re-generation failed stale for good. A stale partition is tried at most
`regeneration_max_attempts` times per generator version (its runs carry the version they aimed
at, `jewel/regenerate-version`).

Re-generation runs are background work: they carry a lower `dagster/priority` than a shopper's
runs (which have the default 0) and the tag `jewel/background: regeneration`, which dagster.yaml
limits to one run at a time (`tag_concurrency_limits`), so a generator version bump never queues
hundreds of runs in front of shoppers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import dagster as dg

from jewel_dagster.contract import (
    CHECK_NAME,
    CODE_VERSION_TAG,
    GENERATIONS_CONFIG,
    PARTITIONS_NAME,
    REGENERATE_ATTEMPT_TAG,
    REGENERATE_REASON_TAG,
    AssetName,
    json_logging_run_config,
    run_config_ops,
)
from jewel_dagster.defs.assets import generate_images
from jewel_dagster.defs.jobs import regenerate_job
from jewel_dagster.defs.request_runs import BACKGROUND_TAG, busy_partitions, runs_by_partition
from jewel_dagster.runtime.storage.check_history import failed_partitions
from jewel_dagster.settings import PipelineSettings, get_settings

FLUX = dg.AssetKey(AssetName.FLUX_GENERATION)
FIDELITY = dg.AssetCheckKey(dg.AssetKey(AssetName.FLUX_METRICS), CHECK_NAME)
PRIORITY_TAG = "dagster/priority"
REGENERATION_PRIORITY = "-10"  # below a shopper's runs (default 0): the queue starts theirs first
REGENERATE_VERSION_TAG = "jewel/regenerate-version"  # the generator version a stale run aimed at
SCHEDULE_BUDGET_SECONDS = 40.0  # a schedule tick walks pages until this (gRPC evaluation limit is 60 s)


def current_flux_version() -> str:
    return generate_images.code_versions_by_key[FLUX] or ""


def _regeneration_request(
    partition: str, reason: str, attempt: int, key: str, seed: int, tags: dict[str, str] | None = None
) -> dg.RunRequest:
    return dg.RunRequest(
        partition_key=partition,
        run_key=f"{partition}:{key}",
        run_config={
            "ops": run_config_ops({GENERATIONS_CONFIG: {"seed": seed}}),
            **(json_logging_run_config() if get_settings().log_format == "json" else {}),
        },
        tags={
            REGENERATE_REASON_TAG: reason,
            REGENERATE_ATTEMPT_TAG: str(attempt),
            PRIORITY_TAG: REGENERATION_PRIORITY,
            BACKGROUND_TAG: "regeneration",
            **(tags or {}),
        },
    )


def _newest_flux_versions(instance: dg.DagsterInstance, partitions: Sequence[str]) -> dict[str, str | None]:
    """Partition -> code version of its newest Flux materialization (absent: never generated)."""
    newest: dict[str, str | None] = {}
    cursor: str | None = None
    while True:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=FLUX, asset_partitions=list(partitions)),
            limit=4 * len(partitions),
            cursor=cursor,
        )
        for record in result.records:  # newest first: the first one seen per partition wins
            partition = record.partition_key
            if partition is not None and partition not in newest:
                newest[partition] = (record.event_log_entry.tags or {}).get(CODE_VERSION_TAG)
        if not result.has_more or len(newest) == len(partitions):
            return newest
        cursor = result.cursor


def page_requests(
    instance: dg.DagsterInstance, partitions: Sequence[str], flux_version: str, max_attempts: int
) -> list[dg.RunRequest]:
    """The re-generation runs a page of partitions needs, in at most five queries (the attempts
    of the stale and the failed ones are one query of their earlier re-generation runs)."""
    busy = busy_partitions(instance, partitions)
    idle = [p for p in partitions if p not in busy]
    made_by = _newest_flux_versions(instance, idle)
    generated = [p for p in idle if p in made_by]  # never generated: nothing to redo
    stale = {p for p in generated if made_by[p] != flux_version}
    failed = failed_partitions(instance, FIDELITY, [p for p in generated if p not in stale])
    earlier = runs_by_partition(instance, sorted(stale | failed), tags={BACKGROUND_TAG: "regeneration"})
    requests = []
    for partition in generated:
        runs = earlier.get(partition, [])
        if partition in stale:
            # None is in progress (busy partitions are left out): each one ended without making
            # this version's image.
            attempts = sum(1 for run in runs if run.tags.get(REGENERATE_VERSION_TAG) == flux_version)
            if attempts < max_attempts:
                key, version = f"stale:{flux_version}:{attempts + 1}", {REGENERATE_VERSION_TAG: flux_version}
                requests.append(_regeneration_request(partition, "stale", attempts + 1, key, attempts, version))
        elif partition in failed:
            attempts = sum(1 for run in runs if run.tags.get(REGENERATE_REASON_TAG) == "failed-check")
            if attempts < max_attempts:
                key = f"failed-check:{attempts + 1}"
                requests.append(_regeneration_request(partition, "failed-check", attempts + 1, key, attempts + 1))
    return requests


@dataclass
class Sweep:
    """What one tick decided: its runs, and where the next tick starts (None: from the start)."""

    requests: list[dg.RunRequest] = field(default_factory=list)
    next_cursor: str | None = None
    partitions_seen: int = 0


def sweep_page(
    instance: dg.DagsterInstance,
    cursor: str | None,
    flux_version: str,
    max_attempts: int,
    page_size: int,
    max_runs: int,
) -> Sweep:
    """One page of the walk from `cursor`, and where the next tick starts: after the page (or
    from the start after the last page), or, when the page asked for more than `max_runs` runs,
    just past the last partition requested, so the rest come next tick and the walk moves on
    even when Dagster skips the requested runs."""
    page = instance.get_paginated_dynamic_partitions(PARTITIONS_NAME, limit=page_size, ascending=True, cursor=cursor)
    requests = page_requests(instance, page.results, flux_version, max_attempts)
    if len(requests) > max_runs:
        requests = requests[:max_runs]
        # Dagster's cursor is the storage id of a page's last row: the page that ends at the last
        # requested partition (the same first rows, in id order) gives the cursor past it.
        last = page.results.index(str(requests[-1].partition_key))
        head = instance.get_paginated_dynamic_partitions(PARTITIONS_NAME, limit=last + 1, ascending=True, cursor=cursor)
        return Sweep(requests, head.cursor, len(page.results))
    return Sweep(requests, page.cursor if page.has_more else None, len(page.results))


def regeneration_requests(
    instance: dg.DagsterInstance,
    flux_version: str,
    max_attempts: int,
    page_size: int = 500,
    max_runs: int | None = None,
    budget_seconds: float | None = None,
) -> Iterator[dg.RunRequest]:
    """A whole sweep, page after page (the schedule's), until the end, `max_runs` or the budget."""
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    left = max_runs
    cursor: str | None = None
    while True:
        sweep = sweep_page(instance, cursor, flux_version, max_attempts, page_size, left or 1 << 30)
        yield from sweep.requests
        if left is not None:
            left -= len(sweep.requests)
        if sweep.next_cursor is None or left == 0 or (deadline is not None and time.monotonic() > deadline):
            return
        cursor = sweep.next_cursor


def build_regeneration_automation(settings: PipelineSettings) -> tuple[dg.SensorDefinition, dg.ScheduleDefinition]:
    @dg.sensor(
        job=regenerate_job,
        minimum_interval_seconds=settings.regeneration_sensor_interval_seconds,
        default_status=(
            dg.DefaultSensorStatus.RUNNING if settings.regeneration_sensor_enabled else dg.DefaultSensorStatus.STOPPED
        ),
        description="Re-generates requests whose fidelity check failed, or whose generator changed "
        "(a page of requests per tick).",
    )
    def regeneration_sensor(context: dg.SensorEvaluationContext) -> Iterator[dg.RunRequest]:
        state = json.loads(context.cursor) if context.cursor else {}
        sweep = sweep_page(
            context.instance,
            state.get("partitions"),
            current_flux_version(),
            settings.regeneration_max_attempts,
            settings.regeneration_page_size,
            settings.regeneration_max_runs_per_tick,
        )
        context.update_cursor(json.dumps({"partitions": sweep.next_cursor}))
        yield from sweep.requests

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
        yield from regeneration_requests(
            context.instance,
            current_flux_version(),
            settings.regeneration_max_attempts,
            settings.regeneration_page_size,
            settings.regeneration_max_runs_per_tick,
            SCHEDULE_BUDGET_SECONDS,
        )

    return regeneration_sensor, regeneration_schedule
