"""The SQLite event log keeps one engine per shard (jewel_dagster/runtime/storage/sqlite_shard_engines.py).

Canary: Dagster's own `_connect` still makes an engine for every use (the cost the override
removes), and the events a run stores go through ours: none through Dagster's method.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
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


def test_the_process_that_runs_a_run_writes_its_events_through_one_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From RUN_START to the run's end: 17 events here, one connection, closed at the end.
    Opened and closed for each event, a WAL database is checkpointed at every close (the cost
    this removes); each event is still committed on its own."""
    prepare_dagster_home({"DAGSTER_HOME": str(tmp_path)})
    opened = _counting_connects(monkeypatch)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, QuickClaimSqliteEventLogStorage)
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
