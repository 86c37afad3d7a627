"""A partition's newest asset-check result, read from the event log storage (one partition, or a
page of partitions in one query for the regeneration sensor).

Dagster 1.13 has no public call for "the newest execution of this check for this partition":
`DagsterInstance` exposes none, and `EventLogStorage.get_asset_check_execution_history` takes a
`PartitionKeyFilter` and answers `AssetCheckExecutionRecordStatus`, both from `dagster._core`.

Private symbols used (checked against dagster 1.13.27):
- `dagster._core.event_api.PartitionKeyFilter`
- `dagster._core.storage.asset_check_execution_record.AssetCheckExecutionRecordStatus`
- `EventLogStorage.get_asset_check_partition_info(keys, partition_keys=...)` (latest status per
  partition, one query per check key)
Canary: tests/unit/test_runtime_canaries.py (a failed check is seen as failed; a passed one not).
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus


def newest_check_failed(instance: dg.DagsterInstance, check: dg.AssetCheckKey, partition: str) -> bool:
    """Did the newest execution of `check` on `partition` fail (False when it never ran)?"""
    history = instance.event_log_storage.get_asset_check_execution_history(
        check, limit=1, partition_filter=PartitionKeyFilter(key=partition)
    )
    return bool(history) and history[0].status == AssetCheckExecutionRecordStatus.FAILED


def failed_partitions(instance: dg.DagsterInstance, check: dg.AssetCheckKey, partitions: Sequence[str]) -> set[str]:
    """The partitions among these whose newest execution of `check` failed, in one query."""
    if not partitions:
        return set()
    infos = instance.event_log_storage.get_asset_check_partition_info([check], partition_keys=list(partitions))
    return {
        info.partition_key
        for info in infos
        if info.partition_key is not None and info.latest_execution_status == AssetCheckExecutionRecordStatus.FAILED
    }
