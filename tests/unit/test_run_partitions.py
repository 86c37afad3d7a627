"""A running run's dynamic partition is asked of the storage once (jewel_dagster/runtime/storage/run_partitions.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from devtools.stack import prepare_dagster_home
from jewel_dagster.runtime.instance_plugins.pool_claims import QuickClaimSqliteEventLogStorage
from jewel_dagster.runtime.storage import run_partitions

REQUESTS = dg.DynamicPartitionsDefinition(name="requests")


@dg.asset(partitions_def=REQUESTS)
def _canvas() -> int:
    return 1


@dg.asset(partitions_def=REQUESTS)
def _mask(_canvas: int) -> int:
    return _canvas


@dg.asset(partitions_def=REQUESTS)
def _generation(_mask: int) -> int:
    return _mask


def _counting_queries(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every `has_dynamic_partition` that reached Dagster's storage (a query) while a run ran in
    this process (`materialize` also checks the key twice before it creates the run)."""
    asked: list[str] = []
    dagsters = run_partitions.SqlEventLogStorage.has_dynamic_partition

    def counted(self: Any, name: str, key: str) -> bool:
        if getattr(self, "_runs_here", True):  # (every query counts without the mixin)
            asked.append(key)
        return dagsters(self, name, key)

    monkeypatch.setattr(run_partitions.SqlEventLogStorage, "has_dynamic_partition", counted)
    return asked


def test_a_run_asks_for_its_partition_once_and_forgets_it_at_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster checks the partition at each materialization (three here, one query each before)."""
    prepare_dagster_home({"DAGSTER_HOME": str(tmp_path)})
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, QuickClaimSqliteEventLogStorage)
        instance.add_dynamic_partitions("requests", ["jewelry-gen-1"])
        asked = _counting_queries(monkeypatch)
        result = dg.materialize([_canvas, _mask, _generation], instance=instance, partition_key="jewelry-gen-1")
        assert result.success
        assert len(result.get_asset_materialization_events()) == 3
        assert asked == ["jewelry-gen-1"]
        assert storage._known_partitions == set()  # forgotten at the run's end
        # Outside a run nothing is remembered (the webserver, the daemon and the gateway ask each time).
        assert instance.has_dynamic_partition("requests", "jewelry-gen-1")
        assert storage._known_partitions == set()


def test_a_partition_deleted_by_the_process_running_a_run_is_forgotten(tmp_path: Path) -> None:
    prepare_dagster_home({"DAGSTER_HOME": str(tmp_path)})
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, QuickClaimSqliteEventLogStorage)
        instance.add_dynamic_partitions("requests", ["kept", "gone"])
        storage._runs_here.add("a-run-in-this-process")  # as after its RUN_START
        assert instance.has_dynamic_partition("requests", "gone")
        assert ("requests", "gone") in storage._known_partitions
        instance.delete_dynamic_partition("requests", "gone")
        assert not instance.has_dynamic_partition("requests", "gone")
        assert not instance.has_dynamic_partition("requests", "never-added")
        assert ("requests", "never-added") not in storage._known_partitions
