"""A partition's newest asset-check result, read from the event log storage (one partition, or a
page of partitions in one query for the regeneration sensor).

Dagster 1.13 has no public call for "the newest execution of this check for this partition":
`DagsterInstance` exposes none, and `EventLogStorage.get_asset_check_execution_history` takes a
`PartitionKeyFilter` and answers `AssetCheckExecutionRecordStatus`, both from `dagster._core`.

Private symbols used (checked against dagster 1.13.27):
- `dagster._core.event_api.PartitionKeyFilter`
- `dagster._core.storage.asset_check_execution_record.AssetCheckExecutionRecordStatus` and
  `AssetCheckExecutionResolvedStatus` (`newest_check_execution`: the status the webserver's
  GraphQL `assetCheckExecutions` answers, resolved as `AssetCheckExecutionRecord.resolve_status`
  does, which needs the webserver's async loading context)
- `EventLogEntry.asset_check_evaluation` (the evaluation an execution record points at)
- `dagster._core.storage.event_log.schema.AssetCheckExecutionsTable` and
  `dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage` (`index_connection()`)
  (`failed_partitions`: Dagster's batched `get_asset_check_partition_info` joins the newest
  materialization of every partition of the asset: 24.6 s for a page of 500 at 10,000
  partitions on PostgreSQL, benchmarks/scale.py)
Canary: tests/unit/test_runtime_canaries.py (a failed check is seen as failed; a passed one not;
the newest execution's status, verdict and texts as GraphQL gives them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import dagster as dg
import sqlalchemy as sa
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus,
    AssetCheckExecutionResolvedStatus,
)
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage


def newest_check_failed(instance: dg.DagsterInstance, check: dg.AssetCheckKey, partition: str) -> bool:
    """Did the newest execution of `check` on `partition` fail (False when it never ran)?"""
    history = instance.event_log_storage.get_asset_check_execution_history(
        check, limit=1, partition_filter=PartitionKeyFilter(key=partition)
    )
    return bool(history) and history[0].status == AssetCheckExecutionRecordStatus.FAILED


@dataclass(frozen=True)
class CheckExecution:
    """The newest execution of a check on a partition, as GraphQL's `assetCheckExecutions` gives it."""

    run_id: str
    status: str  # AssetCheckExecutionResolvedStatus's name: SUCCEEDED, FAILED, IN_PROGRESS, SKIPPED, EXECUTION_FAILED
    passed: bool | None  # None: not evaluated (planned only)
    texts: dict[str, str] = field(default_factory=dict)  # its text metadata, label -> text


def newest_check_execution(
    instance: dg.DagsterInstance, check: dg.AssetCheckKey, partition: str
) -> CheckExecution | None:
    """The newest execution of `check` on `partition` (None when it never ran): two indexed reads
    at most, the run's only when the check was planned and not evaluated."""
    history = instance.event_log_storage.get_asset_check_execution_history(
        check, limit=1, partition_filter=PartitionKeyFilter(key=partition)
    )
    if not history:
        return None
    record = history[0]
    evaluation = record.event.asset_check_evaluation if record.event is not None else None
    texts = (
        {
            label: str(value.text)
            for label, value in evaluation.metadata.items()
            if isinstance(value, dg.TextMetadataValue)
        }
        if evaluation is not None
        else {}
    )
    return CheckExecution(
        record.run_id,
        _resolved(instance, record.status, record.run_id).value,
        evaluation.passed if evaluation else None,
        texts,
    )


def _resolved(
    instance: dg.DagsterInstance, status: AssetCheckExecutionRecordStatus, run_id: str
) -> AssetCheckExecutionResolvedStatus:
    """`AssetCheckExecutionRecord.resolve_status` without the webserver's loading context: a
    planned check is still running, skipped or failed with its run."""
    if status == AssetCheckExecutionRecordStatus.SUCCEEDED:
        return AssetCheckExecutionResolvedStatus.SUCCEEDED
    if status == AssetCheckExecutionRecordStatus.FAILED:
        return AssetCheckExecutionResolvedStatus.FAILED
    run = instance.get_run_by_id(run_id)
    if run is None:  # deleted
        return AssetCheckExecutionResolvedStatus.SKIPPED
    if not run.is_finished:
        return AssetCheckExecutionResolvedStatus.IN_PROGRESS
    if run.status == dg.DagsterRunStatus.FAILURE:
        return AssetCheckExecutionResolvedStatus.EXECUTION_FAILED
    return AssetCheckExecutionResolvedStatus.SKIPPED


def failed_partitions(instance: dg.DagsterInstance, check: dg.AssetCheckKey, partitions: Sequence[str]) -> set[str]:
    """The partitions among these whose newest execution of `check` failed, in one query that
    reads only these partitions' rows of the check-execution index (newest first)."""
    storage = instance.event_log_storage
    if not partitions:
        return set()
    if not isinstance(storage, SqlEventLogStorage):  # pragma: no cover - every storage we configure is SQL
        return {p for p in partitions if newest_check_failed(instance, check, p)}
    table = AssetCheckExecutionsTable
    query = (
        sa.select(table.c.partition, table.c.execution_status)
        .where(
            table.c.asset_key == check.asset_key.to_string(),
            table.c.check_name == check.name,
            table.c.partition.in_(list(partitions)),
            table.c.evaluation_event_storage_id.isnot(None),
        )
        .order_by(table.c.id.desc())
    )
    newest: dict[str, str] = {}
    with storage.index_connection() as conn:
        for partition, status in conn.execute(query):
            newest.setdefault(partition, status)
    return {p for p, status in newest.items() if status == AssetCheckExecutionRecordStatus.FAILED.value}
