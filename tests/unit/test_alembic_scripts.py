"""Dagster's migration scripts are read once per process (jewel_dagster/runtime/storage/alembic_scripts.py).

Canary: an instance opened from its ref (what Dagster's gRPC client does for every launch, and
the code server for every ended run) checks three storages' revisions; with the patch installed
(importing pool_claims installs it) no migration script is read again once they were read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from alembic.script import Script, ScriptDirectory

from devtools.stack import prepare_dagster_home
from jewel_dagster.runtime.instance_plugins import pool_claims
from jewel_dagster.runtime.storage import alembic_scripts


def _counting_script_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    read: list[str] = []
    original = Script._from_path.__func__  # type: ignore[attr-defined]

    def counted(cls: Any, scriptdir: Any, path: str) -> Any:
        read.append(path)
        return original(cls, scriptdir, path)

    monkeypatch.setattr(Script, "_from_path", classmethod(counted))
    return read


def test_an_instance_opened_again_reads_no_migration_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pool_claims.__name__  # imported: installed
    assert ScriptDirectory.from_config.__func__ is alembic_scripts.from_config  # type: ignore[attr-defined]
    prepare_dagster_home({"DAGSTER_HOME": str(tmp_path)})
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        ref = instance.get_ref()
    with dg.DagsterInstance.from_ref(ref) as first:
        first.get_runs(limit=1)
    read = _counting_script_reads(monkeypatch)
    with dg.DagsterInstance.from_ref(ref) as again:
        again.get_runs(limit=1)
    assert read == []


def test_canary_alembics_own_from_config_reads_the_scripts_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """When this fails, Alembic (or Dagster) keeps the revision map itself: drop the patch."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "dagster:_core/storage/alembic")
    read = _counting_script_reads(monkeypatch)
    for _ in range(2):
        alembic_scripts.ALEMBIC_FROM_CONFIG(ScriptDirectory, config).as_revision_number("head")
    assert len(read) >= 2 * 50, len(read)  # ~90 scripts, both times
    assert alembic_scripts.from_config(ScriptDirectory, config) is alembic_scripts.from_config(ScriptDirectory, config)
