"""The SQLite event log keeps one engine per shard (jewel_dagster/runtime/storage/sqlite_shard_engines.py).

Canary: Dagster's own `_connect` still makes an engine for every use (the cost the override
removes), and the events a run stores go through ours: none through Dagster's method.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from devtools.stack import prepare_dagster_home
from jewel_dagster.runtime.instance_plugins.pool_claims import QuickClaimSqliteEventLogStorage
from jewel_dagster.runtime.storage import sqlite_shard_engines

# Dagster's module, whose `_connect` makes the engines (reached through the class runtime/ subclasses).
sqlite_event_log = importlib.import_module(sqlite_shard_engines.SqliteEventLogStorage.__module__)


def _counting(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[str]:
    """Every `create_engine` call of `module`, by connection string."""
    made: list[str] = []
    original: Callable[..., Any] = module.create_engine

    def create_engine(url: str, *args: Any, **kwargs: Any) -> Any:
        made.append(str(url))
        return original(url, *args, **kwargs)

    monkeypatch.setattr(module, "create_engine", create_engine)
    return made


@dg.op
def _one() -> int:
    return 1


@dg.op
def _two(one: int) -> int:
    return one + 1


@dg.job
def _small_job() -> None:
    _two(_one())


def test_a_runs_events_use_one_kept_engine_per_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepare_dagster_home({"DAGSTER_HOME": str(tmp_path)})
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, QuickClaimSqliteEventLogStorage)  # what dagster.yaml configures
        dagsters = _counting(monkeypatch, sqlite_event_log)
        ours = _counting(monkeypatch, sqlite_shard_engines)
        for _ in range(2):
            result = _small_job.execute_in_process(instance=instance)
            assert result.success
            assert len(instance.all_logs(result.run_id)) > 10
    assert dagsters == [], "events went through Dagster's own _connect: the override is bypassed"
    # One engine per shard used (each run's file, and the index), however many events were stored.
    assert len(ours) == len(set(ours)) <= 3, ours


def test_the_engines_kept_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_shard_engines, "ENGINES_KEPT", 2)
    storage = QuickClaimSqliteEventLogStorage(str(tmp_path))
    try:
        for shard in ("a", "b", "c", "a"):
            with storage.run_connection(shard) as conn:
                conn.exec_driver_sql("SELECT 1")
        assert list(storage._shard_engines) == ["c", "a"]
    finally:
        storage.dispose()
    assert not storage._shard_engines


def test_canary_dagsters_sqlite_event_log_makes_an_engine_for_every_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When this fails, Dagster keeps its engines itself: drop the override."""
    stock = sqlite_event_log.SqliteEventLogStorage(str(tmp_path))
    made = _counting(monkeypatch, sqlite_event_log)
    try:
        for _ in range(3):
            with stock.index_connection() as conn:
                conn.exec_driver_sql("SELECT 1")
    finally:
        stock.dispose()
    assert len(made) == 3


def _counting_connects(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """sqlite3 connections opened through the kept engines by connection string, but those of a
    shard's schema check (`_initdb`, once a shard and process)."""
    opened: dict[str, int] = {}
    original: Callable[..., Any] = sqlite_shard_engines.create_engine
    original_initdb: Callable[..., Any] = QuickClaimSqliteEventLogStorage._initdb
    checking: list[bool] = []

    def initdb(self: Any, *args: Any, **kwargs: Any) -> Any:
        checking.append(True)
        try:
            return original_initdb(self, *args, **kwargs)
        finally:
            checking.pop()

    monkeypatch.setattr(QuickClaimSqliteEventLogStorage, "_initdb", initdb)

    def create_engine(url: str, *args: Any, **kwargs: Any) -> Any:
        engine = original(url, *args, **kwargs)

        def connected(*_: Any) -> None:
            if not checking:
                opened[str(url)] = opened.get(str(url), 0) + 1

        sa.event.listen(engine, "connect", connected)
        return engine

    monkeypatch.setattr(sqlite_shard_engines, "create_engine", create_engine)
    return opened


Counted = tuple[dg.DagsterInstance, QuickClaimSqliteEventLogStorage, dict[str, int]]


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counted]:
    """A DAGSTER_HOME as the stack makes it, its event log ours, connections counted by shard."""
    prepare_dagster_home({"DAGSTER_HOME": str(tmp_path)})
    opened = _counting_connects(monkeypatch)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, QuickClaimSqliteEventLogStorage)
        yield instance, storage, opened


def test_the_process_that_runs_a_run_writes_its_events_through_one_connection(counted: Counted) -> None:
    """From RUN_START to the run's end: 17 events here, one connection, closed at the end.
    Opened and closed for each event, a WAL database is checkpointed at every close (the cost
    this removes); each event is still committed on its own."""
    instance, storage, opened = counted
    result = _small_job.execute_in_process(instance=instance)
    assert result.success
    run_shard = [url for url in opened if result.run_id in url]
    assert len(run_shard) == 1
    events = instance.all_logs(result.run_id)
    assert len(events) > 15
    # The kept one, and the read just above: not one an event (19 before).
    assert opened[run_shard[0]] == 2, opened
    assert storage._run_connections == {}  # closed at the run's end
    # Another process's events of a run (the launcher's, the webserver's) keep nothing open.
    run = instance.add_run(dg.DagsterRun(job_name="other", status=dg.DagsterRunStatus.STARTED))
    instance.report_engine_event("an engine event", run)
    assert storage._run_connections == {}


@dg.asset
def _first() -> int:
    return 1


@dg.asset
def _second(_first: int) -> int:
    return _first


@dg.asset
def _third(_second: int) -> int:
    return _second


_ASSET_JOB = dg.Definitions(assets=[_first, _second, _third]).resolve_implicit_global_asset_job_def()


def test_the_process_that_creates_a_run_writes_its_planned_events_through_one_connection(counted: Counted) -> None:
    """The webserver's launch: a planned event per asset, then the run's next event (queued, or
    starting) closes the connection. One connection for all of them (one an event before)."""
    instance, storage, opened = counted
    run = instance.create_run_for_job(job_def=_ASSET_JOB)
    planned = [e for e in instance.all_logs(run.run_id) if e.dagster_event_type is not None]
    assert [e.dagster_event_type for e in planned] == [dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED] * 3
    assert list(storage._run_connections) == [run.run_id]  # kept for what comes next
    instance.report_dagster_event(dg.DagsterEvent("PIPELINE_STARTING", _ASSET_JOB.name), run_id=run.run_id)
    assert storage._run_connections == {}
    run_shard = [url for url in opened if run.run_id in url]
    assert len(run_shard) == 1
    # The kept one served the planned events, the read above and the next event (5 before).
    assert opened[run_shard[0]] == 1, opened


def test_runs_whose_creation_never_ended_keep_a_bounded_number_of_connections(tmp_path: Path) -> None:
    prepare_dagster_home({"DAGSTER_HOME": str(tmp_path)})
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, QuickClaimSqliteEventLogStorage)
        for _ in range(sqlite_shard_engines.CREATIONS_KEPT + 3):
            instance.create_run_for_job(job_def=_ASSET_JOB)
        assert len(storage._run_connections) == sqlite_shard_engines.CREATIONS_KEPT


def _schema(path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], str]:
    """What makes two shards the same to Dagster: tables and indexes, alembic revision, journal mode."""
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            tables = conn.exec_driver_sql("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
            master = [tuple(row) for row in tables]
            revision = [tuple(row) for row in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]
            journal = str(conn.exec_driver_sql("PRAGMA journal_mode").scalar())
    finally:
        engine.dispose()
    return master, revision, journal


def test_new_run_shards_are_copies_of_a_template_with_dagsters_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster's `_initdb` (tables, then alembic's migration scripts read to check and stamp) runs
    once, for the template; each new shard is then a copy, the same as one Dagster makes. When the
    comparison fails (a Dagster upgrade that changed the schema without changing its version),
    the template is stale."""
    stock = sqlite_event_log.SqliteEventLogStorage(str(tmp_path / "stock"))
    ours = QuickClaimSqliteEventLogStorage(str(tmp_path / "ours"))
    initdb_calls: list[str] = []
    dagsters_initdb: Callable[..., Any] = sqlite_event_log.SqliteEventLogStorage._initdb

    def counted(self: Any, engine: Any, *args: Any, **kwargs: Any) -> Any:
        initdb_calls.append(str(engine.url))
        return dagsters_initdb(self, engine, *args, **kwargs)

    monkeypatch.setattr(sqlite_event_log.SqliteEventLogStorage, "_initdb", counted)
    try:
        for storage in (stock, ours):
            for shard in ("run-a", "run-b", "run-c"):
                with storage.run_connection(shard) as conn:
                    conn.exec_driver_sql("SELECT 1")
    finally:
        stock.dispose()
        ours.dispose()
    ours_made = [url for url in initdb_calls if "/ours/" in url]
    assert len(ours_made) == 1 and sqlite_shard_engines.SHARD_TEMPLATE_NAME in ours_made[0], ours_made
    assert _schema(tmp_path / "ours" / "run-b.db") == _schema(tmp_path / "stock" / "run-b.db")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir() if p.suffix != ".db") == [
        sqlite_shard_engines.SHARD_TEMPLATE_NAME
    ]


def test_a_shard_at_the_templates_revision_is_opened_without_dagsters_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process reading a run (the run worker, the gateway) took the run's shard as it is
    when its alembic revision is the template's; a shard at another revision still gets
    Dagster's check (which migrates or refuses it)."""
    maker = QuickClaimSqliteEventLogStorage(str(tmp_path))
    for shard in ("current", "older"):
        with maker.run_connection(shard) as conn:
            conn.exec_driver_sql("SELECT 1")
    maker.dispose()
    with sa.create_engine(f"sqlite:///{tmp_path / 'older.db'}").begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'an-older-revision'")
    checked: list[str] = []

    def counted(self: Any, engine: Any, *args: Any, **kwargs: Any) -> None:
        checked.append(Path(str(engine.url.database)).stem)

    reader = QuickClaimSqliteEventLogStorage(str(tmp_path))
    monkeypatch.setattr(sqlite_event_log.SqliteEventLogStorage, "_initdb", counted)
    try:
        for shard in ("current", "older"):
            with reader.run_connection(shard) as conn:
                conn.exec_driver_sql("SELECT 1")
    finally:
        reader.dispose()
    assert checked == ["older"]


def test_the_process_that_runs_a_run_reads_the_run_storage_through_a_pooled_engine(counted: Counted) -> None:
    """The steps' cancel checks read the run's status ~20 times a request; Dagster's SQLite run
    storage made an engine and a connection for each (storage_engines.pool_sqlite_run_storage)."""
    instance, _, _ = counted
    assert getattr(instance.run_storage, "_engine", None) is None  # a process that runs no run: Dagster's
    result = _small_job.execute_in_process(instance=instance)
    assert result.success
    engine = getattr(instance.run_storage, "_engine", None)
    assert engine is not None, "not pooled at RUN_START"
    opened: list[object] = []
    sa.event.listen(engine, "connect", lambda *args: opened.append(args))
    for _ in range(20):
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    assert len(opened) <= 1, f"{len(opened)} connections for 20 reads"


def test_the_index_shard_is_kept_with_a_runs_connection_and_closed_after_it(counted: Counted) -> None:
    """A run's asset records, materializations and pool claims go to the index shard: a
    connection each before (22 for this run of three assets), one kept beside the run's now."""
    instance, storage, opened = counted
    instance.get_runs(limit=1)  # the index is created and checked before the count
    opened.clear()
    result = _ASSET_JOB.execute_in_process(instance=instance)
    assert result.success
    index = [url for url in opened if url.endswith("/index.db")]
    assert len(index) == 1 and opened[index[0]] <= 2, opened
    assert storage._index_connection is None and storage._run_connections == {}  # closed after the run
