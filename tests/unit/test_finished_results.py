"""A finished run's answer is read once and kept per run id; a running one is never kept as final;
retention's removal still wins over what was kept (issue 28: GET of a COMPLETED request)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from fastapi.testclient import TestClient

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.models import RunInfo
from gateway.dagster_api.status_cache import StatusCache
from gateway.dagster_api.storage_reader import StorageRunReader
from jewel_dagster.contract import FULL_JOB, PARTITION_TAG, PARTITIONS_NAME
from jewel_dagster.defs.retention import remove_requests
from tests.support.gateway_client import gateway_client
from tests.support.instances import home_instance


def _rid() -> str:
    return f"jewelry-gen-{uuid.uuid4()}"


class _Counted:
    """Wraps a reader's method and counts its calls."""

    def __init__(self, target: Any, name: str) -> None:
        self.calls = 0
        self._real = getattr(target, name)
        setattr(target, name, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._real(*args, **kwargs)


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    with home_instance(tmp_path, monkeypatch) as found:
        yield found


@pytest.fixture
def client(tmp_path: Path, instance: dg.DagsterInstance) -> Iterator[TestClient]:
    with gateway_client(tmp_path, status_source="storage") as found:
        yield found


def _finished(instance: dg.DagsterInstance, rid: str) -> str:
    instance.add_dynamic_partitions(PARTITIONS_NAME, [rid])
    run = dg.DagsterRun(job_name=FULL_JOB, status=dg.DagsterRunStatus.SUCCESS, tags={PARTITION_TAG: rid})
    instance.add_run(run)
    return run.run_id


def test_a_finished_result_is_read_once(client: TestClient, instance: dg.DagsterInstance) -> None:
    rid = _rid()
    _finished(instance, rid)
    runs: DagsterRuns = client.app.state.runs  # type: ignore[attr-defined]
    assert isinstance(runs.reader, StorageRunReader)
    run_reads = _Counted(runs.reader, "runs_tagged")
    metadata_reads = _Counted(runs.reader, "newest_texts_of")
    check_reads = _Counted(runs, "fidelity_check")  # from the storage too: no webserver here
    first = client.get(f"/workflow/{rid}")
    assert first.status_code == 200 and first.json()["status"] == "COMPLETED", first.text
    read = (run_reads.calls, metadata_reads.calls, check_reads.calls)
    assert read[0] == 1 and read[1] >= 1 and read[2] == 1, read  # the run, its blobs' paths and backends, its check
    answers = [client.get(f"/workflow/{rid}") for _ in range(5)]
    assert {a.content for a in answers} == {first.content}
    assert (run_reads.calls, metadata_reads.calls, check_reads.calls) == read  # nothing read again


def test_retention_removing_a_kept_result_answers_410(client: TestClient, instance: dg.DagsterInstance) -> None:
    rid = _rid()
    _finished(instance, rid)
    for _ in range(2):  # read, then answered from what was kept
        assert client.get(f"/workflow/{rid}").json()["status"] == "COMPLETED"
    store = client.app.state.store  # type: ignore[attr-defined]
    report = remove_requests(instance, store, [rid], datetime.now(UTC))  # what the retention job does
    assert report.requests_removed == 1
    gone = client.get(f"/workflow/{rid}")
    assert gone.status_code == 410, gone.text


def test_a_running_run_is_not_kept_as_final() -> None:
    """The id of a request's newest run does not change when that run ends: a running run kept as
    final would be answered RUNNING for ever."""
    clock = [1000.0]
    newest = [RunInfo("run-1", FULL_JOB, "STARTED")]
    reads: list[str] = []

    def read(request_id: str) -> RunInfo | None:
        reads.append(request_id)
        return newest[-1]

    cache = StatusCache(read, lambda: 0.25, lambda: 1.0, newest_run_id=lambda request_id: newest[-1].run_id)
    cache.clock = lambda: clock[0]
    try:
        assert cache.latest("w") == newest[-1]
        newest.append(RunInfo("run-1", FULL_JOB, "SUCCESS"))  # the same run ends
        clock[0] += 1.5  # the next poll, past the stale limit
        assert cache.latest("w").status == "SUCCESS"  # type: ignore[union-attr]
        before = len(reads)
        for _ in range(3):  # now final: kept, checked by the newest run's id only
            assert cache.latest("w").status == "SUCCESS"  # type: ignore[union-attr]
        assert len(reads) == before
    finally:
        cache.close()
