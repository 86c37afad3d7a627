"""Canary of jewel_dagster/runtime/storage/storage_engines.py on SQLite: the gateway's reads of the run
storage go through one pooled engine, not an engine and a connection a call (dagster 1.13.27:
`SqliteRunStorage.connect`, its `_conn_string`)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from jewel_dagster.contract import PARTITION_TAG
from jewel_dagster.runtime.storage.storage_engines import dispose_storage_engines, pool_sqlite_run_storage


def test_sqlite_run_reads_share_one_pooled_connection(tmp_path: Path) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        run = dg.DagsterRun(job_name="j", status=dg.DagsterRunStatus.SUCCESS, tags={PARTITION_TAG: "p"})
        instance.add_run(run)
        assert pool_sqlite_run_storage(instance)
        assert not pool_sqlite_run_storage(instance)  # once
        engine = instance.run_storage._engine  # type: ignore[attr-defined]
        opened: list[object] = []
        sa.event.listen(engine, "connect", lambda *args: opened.append(args))
        for _ in range(20):
            assert instance.get_run_ids(filters=dg.RunsFilter(tags={PARTITION_TAG: "p"}), limit=1) == [run.run_id]
        records = instance.get_run_records(filters=dg.RunsFilter(tags={PARTITION_TAG: "p"}), limit=1)
        assert records[0].dagster_run.status == dg.DagsterRunStatus.SUCCESS
        assert len(opened) == 1, f"{len(opened)} sqlite connections for 21 reads"
        # Writes through the same instance still land (the gateway does none, retention might).
        instance.add_run(dg.DagsterRun(job_name="j", status=dg.DagsterRunStatus.STARTED, tags={PARTITION_TAG: "p"}))
        assert len(instance.get_run_ids(filters=dg.RunsFilter(tags={PARTITION_TAG: "p"}))) == 2
        assert dispose_storage_engines(instance) >= 1
