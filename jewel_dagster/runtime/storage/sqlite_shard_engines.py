"""One SQLAlchemy engine per SQLite event log shard, kept, instead of one made for every use.

Dagster 1.13's `SqliteEventLogStorage._connect(shard)` creates an engine for each connection it
hands out (`create_engine(..., poolclass=NullPool)`), uses it once and disposes of it: every stored
event of a run (~50 a request) pays SQLAlchemy's engine construction and its first-connect dialect
set-up. A py-spy profile of the run workers (instant backends, 5 requests) put 5 % of their
samples in `create_engine` alone, and the gateway's and webserver's event reads pay it too.

This keeps the engines, still with NullPool: a connection is opened and closed for each use as
before, so no process holds a shard file open (a run's file deleted by retention is never read
through a connection kept from before), and each use is the same one transaction under the
storage's `_db_lock`. Only the engine objects (no file handle) are kept, the most recently used
`ENGINES_KEPT` of them.

The one exception is the process that runs a run (it stores the run's RUN_START): it keeps one
connection to that run's shard open from RUN_START until it stores the run's end, and every event
of the run goes through it. Opening and closing a connection for each of a run's ~60 events cost
the run worker more than the inserts: closing the last connection of a WAL database checkpoints it
and deletes the WAL, and the next commit starts a new WAL file (py-spy, instant backends: commit
and close were 96 of the 203 samples in `store_event`). Each event is still its own transaction,
committed (and synced) before `store_event` returns, as before: nothing changes in durability. The
file is one the run is still writing, so retention cannot have deleted it; the connection is
closed at the run's end, or with the storage, or with the process.

Private symbols used (checked against dagster 1.13.27):
- `dagster._core.storage.event_log.sqlite.sqlite_event_log.SqliteEventLogStorage`: subclassed;
  its `_connect(shard)` overridden (a context manager yielding a Connection in
  a transaction; `run_connection` and `index_connection` go through it).
- its `conn_string_for_shard(shard)`, `_initdb(engine)`, `_initialized_dbs` (shards whose schema
  was checked by this object) and `_db_lock`, used as Dagster's method uses them.
- `dagster._core.storage.sql.create_engine` and `dagster._core.storage.sqlite.SQLITE_BUSY_TIMEOUT_SECONDS`:
  what Dagster's method builds its engines with.
- `SqliteEventLogStorage.store_event(event)` (the public storage method), wrapped to open and close
  the run's kept connection.
Canary: tests/unit/test_sqlite_shard_engines.py (events stored through the instance make one
engine per shard, and none through Dagster's own `_connect`; a run's events use one connection).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

ENGINES_KEPT = 256  # shards: a process reads or writes a few runs at a time
_RUN_END_EVENTS = frozenset(
    {dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED}
)


class KeptShardEngines(SqliteEventLogStorage):
    """Listed before `SqliteEventLogStorage` in a storage's bases (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before Dagster's __init__: it connects to the index shard to create it.
        self._shard_engines: OrderedDict[str, Engine] = OrderedDict()
        self._run_connections: dict[str, Connection | None] = {}  # run id -> its kept connection, once opened
        super().__init__(*args, **kwargs)

    def store_event(self, event: dg.EventLogEntry) -> None:
        """Dagster's, through a connection to the run's shard kept from its RUN_START to its end
        in the process that runs it (see the module)."""
        event_type = event.dagster_event.event_type if event.dagster_event is not None else None
        if event_type == dg.DagsterEventType.RUN_START:
            with self._db_lock:
                self._run_connections.setdefault(event.run_id, None)
        try:
            super().store_event(event)
        finally:
            if event_type in _RUN_END_EVENTS:
                self._close_run_connection(event.run_id)

    def _close_run_connection(self, run_id: str) -> None:
        with self._db_lock:
            conn = self._run_connections.pop(run_id, None)
        if conn is not None:
            conn.close()

    def _shard_engine(self, shard: str) -> Engine:
        """The kept engine of `shard`, made on first use; the least recently used beyond
        ENGINES_KEPT is disposed of. Called under `_db_lock`."""
        engine = self._shard_engines.pop(shard, None)
        if engine is None:
            engine = create_engine(
                self.conn_string_for_shard(shard),
                poolclass=NullPool,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            )
        self._shard_engines[shard] = engine
        while len(self._shard_engines) > ENGINES_KEPT:
            _, oldest = self._shard_engines.popitem(last=False)
            oldest.dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._shard_engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            if shard in self._run_connections:
                kept = self._run_connections[shard]
                if kept is None or kept.closed or kept.invalidated:
                    kept = self._run_connections[shard] = engine.connect()
                if not kept.in_transaction():  # (a nested use, never seen: a connection of its own)
                    with kept.begin():
                        yield kept
                    return
            with engine.connect() as conn, conn.begin():
                yield conn

    def dispose(self) -> None:
        super().dispose()
        for run_id in list(self._run_connections):
            self._close_run_connection(run_id)
        with self._db_lock:
            while self._shard_engines:
                _, engine = self._shard_engines.popitem()
                engine.dispose()
