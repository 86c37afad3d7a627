"""A process that runs a run answers "does this dynamic partition exist?" from memory once it did.

Dagster builds every asset materialization event of a partitioned run with a check that the
run's partition is still one of its dynamic partitions (`DagsterEvent.asset_materialization` ->
`PartitionsSubset.with_partition_key_range` -> `has_dynamic_partition`): one query of the event
log's index per materialization, ~11 a request, each a connection opened and closed on SQLite.
py-spy of the run workers (instant backends, 8 requests): 63 of the 639 samples of their runs
(10 %).

An existing partition is remembered while this process runs a run (from the RUN_START it stores
until that run's end), then forgotten. Retention never deletes the partition of a request with
a run in flight (jewel_dagster/defs/retention.py skips them), and a partition this process
deletes is forgotten at once; a missing partition is never remembered (asked again each time).
Processes that run no run (webserver, daemon, gateway) always ask the storage, as before.

Only public storage methods are overridden (`store_event`, `has_dynamic_partition`,
`delete_dynamic_partition`). Private symbols used (checked against dagster 1.13.27): the class
`dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage`, subclassed. Canary:
tests/unit/test_run_partitions.py (a run of three assets asked 18 times while it ran, now once).
"""

from __future__ import annotations

import threading
from typing import Any

import dagster as dg
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

_RUN_ENDS = frozenset(
    {dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED}
)


class KnownRunPartitions(SqlEventLogStorage):
    """Listed before Dagster's storage class in a storage's bases."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._runs_here: set[str] = set()
        self._known_partitions: set[tuple[str, str]] = set()
        self._partitions_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def store_event(self, event: dg.EventLogEntry) -> None:
        super().store_event(event)
        event_type = event.dagster_event.event_type if event.dagster_event is not None else None
        if event_type == dg.DagsterEventType.RUN_START:
            with self._partitions_lock:
                self._runs_here.add(event.run_id)
        elif event_type in _RUN_ENDS:
            with self._partitions_lock:
                self._runs_here.discard(event.run_id)
                if not self._runs_here:
                    self._known_partitions.clear()

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        key = (partitions_def_name, partition_key)
        with self._partitions_lock:
            if key in self._known_partitions:
                return True
        found = super().has_dynamic_partition(partitions_def_name, partition_key)
        if found:
            with self._partitions_lock:
                if self._runs_here:
                    self._known_partitions.add(key)
        return found

    def delete_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> None:
        with self._partitions_lock:
            self._known_partitions.discard((partitions_def_name, partition_key))
        super().delete_dynamic_partition(partitions_def_name, partition_key)
