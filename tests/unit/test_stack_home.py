"""devtools.stack's DAGSTER_HOME: storages copied already migrated, and the waits tests shorten."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance

from devtools.stack import Stack, copy_migrated_sqlite, prepare_dagster_home

STORAGES = ("history/runs.db", "history/runs/index.db", "schedules/schedules.db")


def _revision(database: Path) -> str:
    with sqlite3.connect(database) as connection:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(revision)


def test_a_new_home_gets_storages_with_the_current_schema(tmp_path: Path) -> None:
    fresh, copied = tmp_path / "fresh", tmp_path / "copied"
    prepare_dagster_home({"DAGSTER_HOME": str(fresh)})
    with DagsterInstance.from_config(str(fresh)) as instance:  # Dagster creates and stamps them
        instance.get_runs(limit=1)
        instance.all_instigator_state()
    prepare_dagster_home({"DAGSTER_HOME": str(copied)})
    copy_migrated_sqlite(copied)
    for name in STORAGES:
        assert (copied / name).exists(), name
        assert _revision(copied / name) == _revision(fresh / name), name
    with DagsterInstance.from_config(str(copied)) as instance:
        assert instance.get_runs() == []


def test_a_stack_on_a_new_sqlite_home_creates_its_storages_before_any_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` on a fresh machine: the gateway, webserver, daemon and code server starting at
    once on empty files raced to create the same tables ("table alembic_version already exists"
    stopped the gateway). The storages must exist, stamped, before the first process spawns."""
    home = tmp_path / "home"
    env = {"DAGSTER_HOME": str(home)}
    prepare_dagster_home(env)
    seen: list[tuple[str, list[bool]]] = []

    class Spawned(Exception):
        pass

    def spawn(self: Stack, name: str, args: list[str], env: object = None) -> None:
        seen.append((name, [(home / storage).exists() for storage in STORAGES]))
        raise Spawned

    monkeypatch.setattr(Stack, "_spawn", spawn)
    with pytest.raises(Spawned):
        Stack(env).start()
    assert seen and seen[0][1] == [True] * len(STORAGES), seen
    assert _revision(home / STORAGES[0])


def test_a_home_with_storages_keeps_them(tmp_path: Path) -> None:
    prepare_dagster_home({"DAGSTER_HOME": str(tmp_path)})
    copy_migrated_sqlite(tmp_path)
    runs = tmp_path / STORAGES[0]
    with sqlite3.connect(runs) as connection:
        connection.execute("CREATE TABLE mine (x INTEGER)")
    copy_migrated_sqlite(tmp_path)
    with sqlite3.connect(runs) as connection:
        assert connection.execute("SELECT name FROM sqlite_master WHERE name = 'mine'").fetchone()


def test_monitoring_waits_keep_dagster_yaml_unless_set(tmp_path: Path) -> None:
    def monitoring(env: dict[str, str]) -> dict[str, int]:
        prepare_dagster_home({"DAGSTER_HOME": str(tmp_path), **env})
        return dict(yaml.safe_load((tmp_path / "dagster.yaml").read_text())["run_monitoring"])

    default = monitoring({})
    assert (default["poll_interval_seconds"], default["free_slots_after_run_end_seconds"]) == (5, 5)
    short = monitoring({"RUN_MONITORING_POLL_SECONDS": "1", "FREE_SLOTS_AFTER_RUN_END_SECONDS": "1"})
    assert (short["poll_interval_seconds"], short["free_slots_after_run_end_seconds"]) == (1, 1)
