"""Closes the connections a long-lived reader of Dagster's storage holds open.

`DagsterInstance.optimize_for_webserver` (what the gateway's storage reader calls, as the
webserver does) gives each PostgreSQL storage a pooled SQLAlchemy engine that keeps one
connection open. `DagsterInstance.dispose()` does not close it: the dagster-postgres run and
schedule storages inherit a `dispose` that does nothing, and the event log's only stops its
watcher. The pooled connection then lives as long as the storage object, and the run storage is
never collected: the constructor Dagster compiles lazily for its records (`dagster_shared.record`,
e.g. `RunsFilter`) keeps the namespace of its first caller, whose `self` is the run storage.
Measured (issue 27): one idle connection per reader stayed open after `close()` and `gc.collect()`,
the one that ran the `runs` query. So a reader disposes the engines itself.

Private symbols used (checked against dagster 1.13.27 / dagster-postgres 0.29.27):
- `_engine`: the SQLAlchemy engine of `PostgresRunStorage`, `PostgresEventLogStorage` and
  `PostgresScheduleStorage` (replaced by a pooled one in `optimize_for_webserver`).
Canary: tests/unit/test_result_metadata_source.py (no PostgreSQL connection stays open after the
gateway's storage reader is closed; it counts the engines this disposed).
"""

from __future__ import annotations

from typing import Any

import dagster as dg


def dispose_storage_engines(instance: dg.DagsterInstance) -> int:
    """Close every pooled connection of the instance's storages; how many engines were disposed
    (0 on SQLite, whose storages connect once a call and keep no engine)."""
    disposed = 0
    seen: set[int] = set()
    for storage in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
        engine: Any = getattr(storage, "_engine", None)
        if engine is None or id(engine) in seen:
            continue
        seen.add(id(engine))
        engine.dispose()
        disposed += 1
    return disposed
