"""Retention: the job and schedule that remove requests older than `RETENTION_DAYS`.

Every request adds a dynamic partition, its runs, their events and ~9 MB of blobs; without this
nothing is ever removed (issue 17). A request's age is its first run's: a request is a partition
whose runs are tagged with it, and the oldest run is when the shopper sent it. A request with a
run in progress is never removed.

What goes, per request, in an order that a crash can resume: a tombstone first (GET answers 410
from then on), its blobs (`requests/<id>/`, the webhook URL blobs of its runs), its check
result rows, its partition, and its runs last (`delete_run` takes their events: materializations
and check evaluations), because the runs are how the next retention run finds a half-removed
request again. Dagster's own partition wipe (`wipe_asset_partitions`) is not implemented on the
OSS SQLite/PostgreSQL event logs (1.13), so deleting the runs is how the events go.

Tombstones are bounded too: each is a tiny blob `removed/<id>.json`, itself removed after
`RETENTION_TOMBSTONE_DAYS` (then GET answers 404, as for an id never seen). At 1,000 requests a
day and 365 days that is ~365,000 blobs of ~100 bytes; one GET of an unknown id costs one blob read.
"""

# No `from __future__ import annotations`: Dagster reads the op's annotations at definition time.

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import dagster as dg

from jewel_dagster.contract import OWNER_TAG, PARTITION_TAG, PARTITIONS_NAME, WEBHOOK_KEY_TAG
from jewel_dagster.defs.request_runs import BACKGROUND_TAG, busy_partitions, runs_by_partition
from jewel_dagster.resources.blob_store import BlobStore, BlobStoreError
from jewel_dagster.runtime.storage.check_rows import delete_check_rows
from jewel_dagster.runtime.storage.storage_engines import dispose_storage_engines
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import (
    LEFTOVER_PREFIXES,
    TOMBSTONE_PREFIX,
    request_prefix,
    tombstone_path,
    webhook_url_path,
)

RETENTION_JOB = "retention"
T = TypeVar("T")
RUN_PAGE = 1_000  # run records read per query while looking for expired requests
BATCH = 200  # requests removed per batch of queries (bounded IN lists)
STATEMENT_TIMEOUT_MS = 300_000  # one statement of a retention pass; a longer one is a stuck database


@dataclass
class RetentionReport:
    """What one retention run removed: shown as the run's output metadata."""

    requests_removed: int = 0
    requests_skipped_running: int = 0
    runs_removed: int = 0
    check_rows_removed: int = 0
    blobs_removed: int = 0
    tombstones_expired: int = 0
    leftovers_removed: int = 0  # claims and webhook URLs older than the cutoff


# Blobs that belong to no request folder (storage_layout.LEFTOVER_PREFIXES), removed once older
# than the retention cutoff: claims (gateway/claims.py: idempotency keys, webhook deliveries,
# continued runs; each settled within minutes) and webhook URLs (with the caller's credentials; a
# launch that failed left its own behind). Step logs (in Azure, under the compute log manager's
# prefix) go with their run, through the instance's compute log manager: listing all of them every
# night would not be bounded.
LEFTOVERS_PER_REQUEST = 50  # a pass removes at most this many per request it may remove: bounded


def expired_requests(instance: dg.DagsterInstance, cutoff: datetime, limit: int) -> list[str]:
    """Up to `limit` requests whose first run is older than `cutoff`, oldest first.

    Walks run records created before the cutoff in id order, a page at a time: any such run
    belongs to a request created before the cutoff.
    """
    found: dict[str, None] = {}
    cursor: str | None = None
    while len(found) < limit:
        page = instance.get_run_records(
            dg.RunsFilter(created_before=cutoff), limit=RUN_PAGE, ascending=True, cursor=cursor
        )
        for record in page:
            partition = record.dagster_run.tags.get(PARTITION_TAG)
            if partition:
                found.setdefault(partition, None)
        if len(page) < RUN_PAGE:
            break
        cursor = page[-1].dagster_run.run_id
    return list(found)[:limit]


def _owner(runs: Sequence[dg.DagsterRun]) -> str | None:
    return next((r.tags[OWNER_TAG] for r in runs if OWNER_TAG in r.tags), None)


def remove_requests(
    instance: dg.DagsterInstance, store: BlobStore, partitions: Sequence[str], now: datetime
) -> RetentionReport:
    """Remove these requests (not the busy ones) with everything they left in Dagster and the store."""
    report = RetentionReport()
    for start in range(0, len(partitions), BATCH):
        chunk = partitions[start : start + BATCH]
        busy = busy_partitions(instance, chunk)
        report.requests_skipped_running += len(busy)
        removable = [p for p in chunk if p not in busy]
        runs = runs_by_partition(instance, removable)
        for partition in removable:
            tombstone = {"removedAt": now.isoformat(), "owner": _owner(runs.get(partition, []))}
            store.put(tombstone_path(partition), json.dumps(tombstone).encode(), "application/json")
            report.blobs_removed += store.delete_prefix(request_prefix(partition))
            for run in runs.get(partition, []):
                if WEBHOOK_KEY_TAG in run.tags:
                    try:
                        store.delete_path(webhook_url_path(run.tags[WEBHOOK_KEY_TAG]))
                    except BlobStoreError:
                        pass  # a malformed key names no blob of ours
        run_ids = [run.run_id for partition in removable for run in runs.get(partition, [])]
        for run_id in run_ids:
            delete_step_logs(instance, run_id)
        report.check_rows_removed += delete_check_rows(instance, run_ids)
        for partition in removable:
            instance.delete_dynamic_partition(PARTITIONS_NAME, partition)
        for run_id in run_ids:
            instance.delete_run(run_id)
        report.requests_removed += len(removable)
        report.runs_removed += len(run_ids)
    return report


def delete_step_logs(instance: dg.DagsterInstance, run_id: str) -> None:
    """The run's captured stdout/stderr, wherever the instance's compute log manager keeps them
    (local files, or blobs in Azure): `delete_run` leaves them behind."""
    try:
        instance.compute_log_manager.delete_logs(prefix=[run_id])
    except Exception as exc:  # noqa: BLE001 - a manager that cannot delete must not stop the pass
        dg.get_dagster_logger().warning(f"retention: step logs of run {run_id} not removed: {exc}")


def remove_leftovers(store: BlobStore, before: datetime, limit: int) -> int:
    """Remove up to `limit` blobs under LEFTOVER_PREFIXES written before `before`."""
    removed = 0
    for prefix in LEFTOVER_PREFIXES:
        for blob in store.list_prefix(prefix):
            if removed >= limit:
                return removed
            if blob.modified < before:
                store.delete_path(blob.path)
                removed += 1
    return removed


def with_pooled_connections(instance: dg.DagsterInstance, work: Callable[[dg.DagsterInstance], T]) -> T:
    """`work` done on the instance again, with storages that keep their database connections open.

    Dagster's PostgreSQL storages open a connection per call (NullPool) outside the webserver,
    and `delete_run` makes ~7 calls: a connection set-up each. Measured here (400 requests,
    quiet machine): 23 ms a request removed with 8 threads unpooled, 15.6 ms pooled and one at a
    time, 10.4 ms pooled with 2 threads; one at a time is kept, as it needs one connection per
    storage and 10,000 requests still take under 3 minutes (issue 17: <= 5). `optimize_for_webserver`
    is Dagster's public switch to a pool (what the webserver does; its pool keeps one connection);
    it is applied to a separate instance built from the same configuration, so the run's own
    instance (long-lived in a Celery worker) is left as it was. SQLite storages ignore it.
    """
    if instance.is_ephemeral:
        return work(instance)
    pooled = dg.DagsterInstance.from_ref(instance.get_ref())
    try:
        pooled.optimize_for_webserver(
            # overflow: a storage call may connect again inside another (store_event_batch does)
            statement_timeout=STATEMENT_TIMEOUT_MS,
            pool_recycle=3600,
            max_overflow=2,
        )
        return work(pooled)
    finally:
        # dispose() stops watchers and leaves each storage's pooled connection open, and collecting
        # the instance does not close it either: Dagster's run storage outlives it when retention
        # was the first in the process to filter runs (jewel_dagster.runtime.storage.storage_engines).
        dispose_storage_engines(pooled)
        pooled.dispose()


def expire_tombstones(store: BlobStore, before: datetime) -> int:
    """Remove tombstones written before `before`: the 410 answer has a lifetime too."""
    expired = [blob.path for blob in store.list_prefix(TOMBSTONE_PREFIX) if blob.modified < before]
    for path in expired:
        store.delete_path(path)
    return len(expired)


def run_retention(
    instance: dg.DagsterInstance,
    store: BlobStore,
    retention_days: int,
    max_requests: int,
    tombstone_days: int,
    now: datetime | None = None,
) -> RetentionReport:
    """One retention pass; `retention_days` 0 keeps everything (tombstones still expire)."""
    now = now or datetime.now(UTC)
    report = RetentionReport()
    if retention_days > 0:
        cutoff = now - timedelta(days=retention_days)
        report = with_pooled_connections(
            instance, lambda pooled: remove_requests(pooled, store, expired_requests(pooled, cutoff, max_requests), now)
        )
        report.leftovers_removed = remove_leftovers(store, cutoff, max_requests * LEFTOVERS_PER_REQUEST)
    report.tombstones_expired = expire_tombstones(store, now - timedelta(days=tombstone_days))
    return report


class RetentionConfig(dg.Config):
    """Launchpad overrides; unset fields take RETENTION_DAYS / RETENTION_MAX_REQUESTS."""

    retention_days: int | None = None
    max_requests: int | None = None


def build_retention(settings: PipelineSettings) -> tuple[dg.JobDefinition, dg.ScheduleDefinition]:
    @dg.op(out=dg.Out(dg.Nothing))
    def remove_expired_requests(
        context: dg.OpExecutionContext, config: RetentionConfig, blob_store: BlobStore
    ) -> Iterator[dg.Output[None]]:
        """Removes requests older than the retention period: runs, partition, events, blobs."""
        days = settings.retention_days if config.retention_days is None else config.retention_days
        limit = config.max_requests or settings.retention_max_requests
        started = datetime.now(UTC)
        report = run_retention(context.instance, blob_store, days, limit, settings.retention_tombstone_days)
        seconds = round((datetime.now(UTC) - started).total_seconds(), 3)
        context.log.info(f"retention ({days} days): {report}")
        yield dg.Output(None, metadata={**asdict(report), "retention_days": days, "seconds": seconds})

    @dg.job(
        name=RETENTION_JOB,
        tags={BACKGROUND_TAG: "retention"},
        description="Removes requests older than RETENTION_DAYS (runs, partition, events, blobs).",
    )
    def retention_job() -> None:
        remove_expired_requests()

    @dg.schedule(
        job=retention_job,
        cron_schedule=settings.retention_cron,
        default_status=(
            dg.DefaultScheduleStatus.RUNNING if settings.retention_days > 0 else dg.DefaultScheduleStatus.STOPPED
        ),
        description="Runs the retention job daily (off when RETENTION_DAYS is 0).",
    )
    def retention_schedule() -> dg.RunRequest:
        return dg.RunRequest()

    return retention_job, retention_schedule
