"""Dagster's alembic migration scripts read once per process, not each time a storage is opened.

Every Dagster storage checks its schema's revision when it is opened
(`dagster._core.storage.sql.check_alembic_revision`): `ScriptDirectory.from_config` makes a new
`ScriptDirectory`, whose revision map is built by reading and compiling every migration script
Dagster ships (~90 files), for the one answer "which revision is head". Dagster opens whole
instances from their refs on hot paths: its gRPC client's `start_run` opens one (three storages,
three checks) for every launch, only to report an error should one happen; the code server opens
one for every run worker that ended; every run worker opens one. py-spy, 10 launches, instant
backends: `check_alembic_revision` was 98 of the queue daemon's 207 samples in `_dequeue_run`
(the launch path: RUN_STARTING to RUN_START) and 117 of the code server's 289.

Here `ScriptDirectory.from_config` answers the same `ScriptDirectory` for the same configuration
of a script folder inside the dagster package, so its revision map (alembic memoizes it on the
object) is built once per process. The scripts are files of the installed package and do not
change while a process runs. Other script folders (none in this project) are Alembic's as before.

Installed by importing `jewel_dagster.runtime.instance_plugins.pool_claims` (the event log storage
every configuration of ours names), so from a process's first instance on.

A runtime patch of Alembic's public `ScriptDirectory.from_config` (checked against alembic
1.20.1). Private Dagster API (checked against dagster 1.13.27): `dagster._core.storage.sql.
get_alembic_config` and the module `dagster._core.storage.runs.sqlite.sqlite_run_storage`, to
build the configuration Dagster's storages check with (their .ini files are alike).
Canary: tests/unit/test_alembic_scripts.py (Alembic's own from_config still reads every script
each time; an instance opened from its ref reads none once they were read).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory
from dagster._core.storage.runs.sqlite import sqlite_run_storage
from dagster._core.storage.sql import get_alembic_config

_PATCHED = "_jewel_scripts_read_once"
ALEMBIC_FROM_CONFIG: Callable[[type[ScriptDirectory], Config], ScriptDirectory] = ScriptDirectory.from_config.__func__  # type: ignore[attr-defined]
_directories: dict[tuple[Any, ...], ScriptDirectory] = {}
_lock = threading.Lock()


def _key(config: Config) -> tuple[Any, ...] | None:
    """What `from_config` reads of `config`, for a script folder of the dagster package; else None."""
    location = config.get_main_option("script_location")
    if not location or not location.startswith("dagster"):
        return None
    return (  # not the .ini file's name: Dagster's storages each have one, all alike
        location,
        tuple(config.get_version_locations_list() or ()),
        config.get_main_option("file_template"),
        config.get_main_option("sourceless"),
    )


def from_config(cls: type[ScriptDirectory], config: Config) -> ScriptDirectory:
    """Alembic's `ScriptDirectory.from_config`, one object per configuration of a dagster folder."""
    key = _key(config) if cls is ScriptDirectory else None
    if key is None:
        return ALEMBIC_FROM_CONFIG(cls, config)
    with _lock:
        directory = _directories.get(key)
        if directory is None:
            directory = _directories[key] = ALEMBIC_FROM_CONFIG(cls, config)
    return directory


def install() -> None:
    """Replace Alembic's classmethod and read Dagster's scripts now, once per process: in the
    warm code server's forkserver (which imports pool_claims) that is before any run worker is
    forked, so the workers start with the revision map built."""
    if getattr(ScriptDirectory, _PATCHED, False):
        return
    ScriptDirectory.from_config = classmethod(from_config)  # type: ignore[method-assign,assignment]
    setattr(ScriptDirectory, _PATCHED, True)
    ScriptDirectory.from_config(get_alembic_config(sqlite_run_storage.__file__)).as_revision_number("head")
