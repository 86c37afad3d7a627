"""A partition's newest asset-check result, read from the event log storage.

Dagster 1.13 has no public call for "the newest execution of this check for this partition":
`DagsterInstance` exposes none, and `EventLogStorage.get_asset_check_execution_history` takes a
`PartitionKeyFilter` and answers `AssetCheckExecutionRecordStatus`, both from `dagster._core`.

Private symbols used (checked against dagster 1.13.27):
- `dagster._core.event_api.PartitionKeyFilter`
- `dagster._core.storage.asset_check_execution_record.AssetCheckExecutionRecordStatus`
Canary: tests/unit/test_runtime_canaries.py (a failed check is seen as failed; a passed one not).
"""

from __future__ import annotations

import dagster as dg
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus


def newest_check_failed(instance: dg.DagsterInstance, check: dg.AssetCheckKey, partition: str) -> bool:
    """Did the newest execution of `check` on `partition` fail (False when it never ran)?"""
    history = instance.event_log_storage.get_asset_check_execution_history(
        check, limit=1, partition_filter=PartitionKeyFilter(key=partition)
    )
    return bool(history) and history[0].status == AssetCheckExecutionRecordStatus.FAILED
