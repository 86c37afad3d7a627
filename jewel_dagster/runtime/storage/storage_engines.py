"""Pools a long-lived reader's SQLite run storage connections, and closes the connections such a
reader of Dagster's storage holds open.

SQLite: `SqliteRunStorage.connect` makes a new SQLAlchemy engine (NullPool) for every call, so each
read pays an engine, a sqlite3 connection and SQLAlchemy's first-connect dialect set-up: ~4.6 ms of
CPU for a one-row `get_run_ids` (measured on a loaded 2-core machine), 45 % of the gateway's CPU
under GETs of COMPLETED workflows (py-spy, benchmarks.completed_get). The gateway only reads through
its instance (it launches over GraphQL), so `pool_sqlite_run_storage` gives that storage one pooled
engine, as `optimize_for_webserver` does for PostgreSQL (a no-op on SQLite). An idle pooled sqlite3
connection holds no lock; each use is one short transaction, as before.

`DagsterInstance.optimize_for_webserver` (what the gateway's storage reader calls, as the
webserver does) gives each PostgreSQL storage a pooled SQLAlchemy engine that keeps one
connection open. `DagsterInstance.dispose()` does not close it: the dagster-postgres run and
schedule storages inherit a `dispose` that does nothing, and the event log's only stops its
watcher. The pooled connection then lives as long as the storage object, and the run storage is
never collected: the constructor Dagster compiles lazily for its records (`dagster_shared.record`,
e.g. `RunsFilter`) keeps the namespace of its first caller, whose `self` is the run storage.
Measured (issue 27): one idle connection per reader stayed open after `close()` and `gc.collect()`,
the one that ran the `runs` query. So a reader disposes the engines itself, and so does
retention's pooled instance (jewel_dagster/defs/retention.py: its test failed whenever retention
was the first in its process to filter runs).

Private symbols used (checked against dagster 1.13.27 / dagster-postgres 0.29.27):
- `_engine`: the SQLAlchemy engine of `PostgresRunStorage`, `PostgresEventLogStorage` and
  `PostgresScheduleStorage` (replaced by a pooled one in `optimize_for_webserver`); set here on a
  pooled `SqliteRunStorage` too, so that `dispose_storage_engines` closes it.
- `dagster._core.storage.runs.SqliteRunStorage`, its `_conn_string` and its `connect()` (the one
  door every read of `SqlRunStorage` goes through), replaced on the instance's storage object.
Canaries: tests/unit/test_result_metadata_source.py (no PostgreSQL connection stays open after the
gateway's storage reader is closed; it counts the engines this disposed) and
tests/unit/test_storage_engines.py (SQLite run reads go through the pooled engine, one connection).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

SQLITE_POOL_SIZE = 4  # connections kept; more are opened (and closed) for reads at once


def pool_sqlite_run_storage(instance: dg.DagsterInstance) -> bool:
    """Give the instance's SQLite run storage one pooled engine for its reads; False (nothing done)
    for any other run storage. Only for an instance that does not migrate or wipe its storage."""
    from dagster._core.storage.runs import SqliteRunStorage

    storage = instance.run_storage
    if not isinstance(storage, SqliteRunStorage) or getattr(storage, "_engine", None) is not None:
        return False
    engine = sa.create_engine(storage._conn_string, pool_size=SQLITE_POOL_SIZE, max_overflow=32, pool_timeout=30)

    @contextmanager
    def connect() -> Iterator[Connection]:
        with engine.connect() as conn, conn.begin():
            yield conn

    storage.connect = connect  # type: ignore[method-assign]
    storage._engine = engine  # type: ignore[attr-defined]
    return True


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
