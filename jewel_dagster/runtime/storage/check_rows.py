"""Removes the asset-check result rows of deleted runs.

`DagsterInstance.delete_run` deletes a run's event log entries (its materializations and check
evaluation events) but not the rows of the `asset_check_executions` index table, and the
partition-level wipe Dagster offers (`wipe_asset_partitions`, GraphQL
`deleteDynamicPartitions(wipeMaterializations: true)`) raises NotImplementedError on the OSS
SQLite and PostgreSQL event logs (1.13). Without this, every removed request would leave its
check results (a serialized evaluation each, ~1-2 KB) behind for ever.

Private symbols used (checked against dagster 1.13.27):
- `dagster._core.storage.event_log.schema.AssetCheckExecutionsTable` (column `run_id`)
- `dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage` (`index_connection()`,
  `has_table()`), the base of the SQLite and PostgreSQL event logs
Canary: tests/unit/test_retention.py (a removed request leaves no check execution row).
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage


def delete_check_rows(instance: dg.DagsterInstance, run_ids: Sequence[str]) -> int:
    """Delete the check-execution rows of these runs; how many went (0 when the storage has none)."""
    storage = instance.event_log_storage
    if not run_ids or not isinstance(storage, SqlEventLogStorage) or not storage.has_table("asset_check_executions"):
        return 0
    removed = 0
    with storage.index_connection() as conn:
        for start in range(0, len(run_ids), 500):  # bounded IN lists
            chunk = list(run_ids[start : start + 500])
            result = conn.execute(
                AssetCheckExecutionsTable.delete().where(AssetCheckExecutionsTable.c.run_id.in_(chunk))
            )
            removed += int(result.rowcount or 0)
    return removed
