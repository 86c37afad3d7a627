"""A partition's newest asset-check result, read from the event log storage (one partition, or a
page of partitions in one query for the regeneration sensor).

Dagster 1.13 has no public call for "the newest execution of this check for this partition":
`DagsterInstance` exposes none, and `EventLogStorage.get_asset_check_execution_history` takes a
`PartitionKeyFilter` and answers `AssetCheckExecutionRecordStatus`, both from `dagster._core`.

Private symbols used (checked against dagster 1.13.27):
- `dagster._core.event_api.PartitionKeyFilter`
- `dagster._core.storage.asset_check_execution_record.AssetCheckExecutionRecordStatus`
- `dagster._core.storage.event_log.schema.AssetCheckExecutionsTable` and
  `dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage` (`index_connection()`)
  (`failed_partitions`: Dagster's batched `get_asset_check_partition_info` joins the newest
  materialization of every partition of the asset: 24.6 s for a page of 500 at 10,000
  partitions on PostgreSQL, benchmarks/scale.py)
Canary: tests/unit/test_runtime_canaries.py (a failed check is seen as failed; a passed one not).
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
import sqlalchemy as sa
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage


def newest_check_failed(instance: dg.DagsterInstance, check: dg.AssetCheckKey, partition: str) -> bool:
    """Did the newest execution of `check` on `partition` fail (False when it never ran)?"""
    history = instance.event_log_storage.get_asset_check_execution_history(
        check, limit=1, partition_filter=PartitionKeyFilter(key=partition)
    )
    return bool(history) and history[0].status == AssetCheckExecutionRecordStatus.FAILED


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
