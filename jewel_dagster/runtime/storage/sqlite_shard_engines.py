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

While a run's connection is kept, so is one to the index shard, the other file its events and
reads go to (asset records for Dagster's data versions, materializations, pool claims): 29 index
connections for a run of three assets before, one now.

That process also reads the run's status often (the steps' cancel checks, before each model call
and output, ~20 a request): at RUN_START its instance's SQLite run storage gets one pooled engine
(storage_engines.pool_sqlite_run_storage, as the gateway's reader has), where Dagster's makes an
engine and a connection for every read.

The process that creates a run (the webserver, for the gateway's launches) keeps one connection
to the run's new shard the same way while it stores the run's creation events (one
ASSET_MATERIALIZATION_PLANNED per asset, the check's planned event), closed with the next event
of the run it stores (RUN_ENQUEUED, or RUN_STARTING without a queue; a RUN_START keeps it, as
above). py-spy of the webserver over 10 launches: 35 % of `launchRun` was creating each new shard
(Dagster's `_initdb`: the tables, then alembic reading its migration scripts to check and stamp
the revision), 29 % commits and 18 % closing a connection after each of the ~12 events (the WAL
checkpoint). A new shard is now a copy of a template shard that Dagster's own `_initdb` made once
(per Dagster version, in the storage's folder, named so that Dagster's `*.db` globs never list
it): the same tables, indexes, WAL mode and alembic revision, without alembic.

Private symbols used (checked against dagster 1.13.27):
- `dagster._core.storage.event_log.sqlite.sqlite_event_log.SqliteEventLogStorage`: subclassed,
  and its module's `INDEX_SHARD_NAME` (the index shard's name);
  its `_connect(shard)` overridden (a context manager yielding a Connection in
  a transaction; `run_connection` and `index_connection` go through it).
- its `conn_string_for_shard(shard)`, `_initdb(engine, for_index_shard)` (overridden: a new run
  shard copied from the template), `_initialized_dbs` (shards whose schema was checked by this
  object) and `_db_lock`, used as Dagster's method uses them.
- `dagster._core.storage.sql.create_engine` and `dagster._core.storage.sqlite.SQLITE_BUSY_TIMEOUT_SECONDS`:
  what Dagster's method builds its engines with.
- `SqliteEventLogStorage.store_event(event)` (the public storage method), wrapped to open and close
  the run's kept connection.
Canary: tests/unit/test_sqlite_shard_engines.py (events stored through the instance make one
engine per shard, and none through Dagster's own `_connect`; a run's events use one connection;
a run's creation events one connection; a shard made from the template has the schema and the
alembic revision of one Dagster made).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from typing import Any

import dagster as dg
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from jewel_dagster.runtime.storage.storage_engines import pool_sqlite_run_storage

ENGINES_KEPT = 256  # shards: a process reads or writes a few runs at a time
_RUN_END_EVENTS = frozenset(
    {dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED}
)
# What Dagster stores for a run as it creates it, before the run is queued or launched.
CREATION_EVENTS = frozenset(
    {dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED}
)
# Runs whose creation connection is kept at once: one whose creation failed before its next event
# gives its connection back when newer creations push it out.
CREATIONS_KEPT = 8
# Not `*.db` (Dagster lists a storage's shards, and wipes them, by that glob); one per Dagster version.
SHARD_TEMPLATE_NAME = f".jewel-shard-template-{dg.__version__}.sqlite"


class KeptShardEngines(SqliteEventLogStorage):
    """Listed before `SqliteEventLogStorage` in a storage's bases (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before Dagster's __init__: it connects to the index shard to create it.
        self._shard_engines: OrderedDict[str, Engine] = OrderedDict()
        self._run_connections: dict[str, Connection | None] = {}  # run id -> its kept connection, once opened
        self._creating: OrderedDict[str, None] = OrderedDict()  # runs whose creation events this process stores
        self._index_connection: Connection | None = None  # kept while any run's connection is
        self._template_revisions: dict[str, str | None] = {}  # template path -> its alembic revision
        super().__init__(*args, **kwargs)

    def store_event(self, event: dg.EventLogEntry) -> None:
        """Dagster's, through a connection to the run's shard kept from its RUN_START to its end
        in the process that runs it, and over its creation events in the process that creates it
        (see the module)."""
        event_type = event.dagster_event.event_type if event.dagster_event is not None else None
        run_id = event.run_id
        pushed_out: list[str] = []
        with self._db_lock:
            if event_type == dg.DagsterEventType.RUN_START or event_type in CREATION_EVENTS:
                self._run_connections.setdefault(run_id, None)
            if event_type in CREATION_EVENTS:
                self._creating[run_id] = None
                self._creating.move_to_end(run_id)
                while len(self._creating) > CREATIONS_KEPT:
                    pushed_out.append(self._creating.popitem(last=False)[0])
        for old in pushed_out:
            self._close_run_connection(old)
        if event_type == dg.DagsterEventType.RUN_START and self.has_instance:
            # The run's steps read its status before each model call and output (cancellation.py):
            # ~20 reads a request, each an engine and a sqlite3 connection on Dagster's run storage.
            pool_sqlite_run_storage(self._instance)
        try:
            super().store_event(event)
        finally:
            if event_type in _RUN_END_EVENTS:
                self._end_creation(run_id)
                self._close_run_connection(run_id)
            elif event_type not in CREATION_EVENTS and run_id in self._creating:
                self._end_creation(run_id)
                if event_type != dg.DagsterEventType.RUN_START:  # this process runs it: kept on
                    self._close_run_connection(run_id)

    def _end_creation(self, run_id: str) -> None:
        with self._db_lock:
            self._creating.pop(run_id, None)

    def _close_run_connection(self, run_id: str) -> None:
        """Close the run's kept connection, and the index's once no run's is kept."""
        index = None
        with self._db_lock:
            conn = self._run_connections.pop(run_id, None)
            if not self._run_connections:
                index, self._index_connection = self._index_connection, None
        for kept in (conn, index):
            if kept is not None:
                kept.close()

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
            kept = self._kept_connection(shard, engine)
            if kept is not None and not kept.in_transaction():  # (nested: a connection of its own)
                with kept.begin():
                    yield kept
                return
            with engine.connect() as conn, conn.begin():
                yield conn

    def _kept_connection(self, shard: str, engine: Engine) -> Connection | None:
        """The connection kept for `shard`, opened if it is not open; None for a shard whose
        connections are not kept. A run's own shard while it is kept; the index while any run's
        is (its asset records, materializations and pool claims go there). Under `_db_lock`."""
        if shard in self._run_connections:
            kept = self._run_connections[shard]
            if kept is None or kept.closed or kept.invalidated:
                kept = self._run_connections[shard] = engine.connect()
            return kept
        if shard == INDEX_SHARD_NAME and self._run_connections:
            index = self._index_connection
            if index is None or index.closed or index.invalidated:
                index = self._index_connection = engine.connect()
            return index
        return None

    def _initdb(self, engine: Engine, for_index_shard: bool = False) -> None:
        """Dagster's, except that a run shard not yet on disk is copied from the template, and
        one already at the template's alembic revision is taken as it is (one SELECT, where
        Dagster's check reads alembic's migration scripts: every process that reads a run, the
        run worker and the gateway's status reads included, checked each shard that way)."""
        path = engine.url.database
        if not for_index_shard and path:
            if not os.path.exists(path):
                if self._copy_template(path):
                    return
            elif self._at_template_revision(path, engine):
                return
        super()._initdb(engine, for_index_shard=for_index_shard)

    def _at_template_revision(self, path: str, engine: Engine) -> bool:
        """Whether the shard's alembic revision is the template's (False without a template)."""
        template = os.path.join(os.path.dirname(path), SHARD_TEMPLATE_NAME)
        if not os.path.exists(template):
            return False
        wanted = self._template_revisions.get(template)
        if wanted is None:
            wanted = self._template_revisions[template] = _alembic_revision(template)
        try:
            with engine.connect() as conn:
                found = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        except Exception:  # no table yet (another process is making it): Dagster's check decides
            return False
        return wanted is not None and found == wanted

    def _copy_template(self, path: str) -> bool:
        """Put a copy of the template shard at `path`; False if another process made the file
        first (Dagster's `_initdb` then checks it). The template is made by Dagster's `_initdb`
        once, under a temporary name, and renamed into place when complete."""
        folder = os.path.dirname(path)
        template = os.path.join(folder, SHARD_TEMPLATE_NAME)
        if not os.path.exists(template):
            building = f"{template}.{uuid.uuid4().hex}.tmp"
            engine = create_engine(f"sqlite:///{building}", poolclass=NullPool)
            try:
                super()._initdb(engine)
            finally:
                engine.dispose()  # the last connection closed: the WAL is checkpointed into the file
            os.replace(building, template)
        copy = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            shutil.copyfile(template, copy)
            os.link(copy, path)  # never over a shard another process made meanwhile
        except FileExistsError:
            return False
        finally:
            with suppress(FileNotFoundError):
                os.unlink(copy)
        return True

    def dispose(self) -> None:
        super().dispose()
        for run_id in list(self._run_connections):
            self._close_run_connection(run_id)
        with self._db_lock:
            while self._shard_engines:
                _, engine = self._shard_engines.popitem()
                engine.dispose()


def _alembic_revision(path: str) -> str | None:
    """The alembic revision stamped in a SQLite file."""
    with closing(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_SECONDS)) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0]) if row else None
