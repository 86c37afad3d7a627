"""Retention: expired requests leave no run, partition, event, check row or blob; recent and
running ones stay; the gateway answers 410 for a removed workflow (404 for one never seen)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from jewel_dagster.contract import CHECK_NAME, OWNER_TAG, PARTITION_TAG, PARTITIONS_NAME, AssetName, run_config_ops
from jewel_dagster.defs.assets import ALL_ASSETS
from jewel_dagster.defs.retention import RETENTION_JOB, build_retention, run_retention
from jewel_dagster.resources.blob_store import LocalBlobStore
from jewel_dagster.resources.selection import build_resources
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import tombstone_path
from tests.support.answers import assert_refused, no_workflow
from tests.support.gateway_client import gateway_with_fake_dagster
from tests.support.infra import pg_sessions_opened, postgres_database
from tests.support.photos import RING_CLICK, synthetic_ring, to_jpeg

FIDELITY = dg.AssetCheckKey(dg.AssetKey(AssetName.FLUX_METRICS), CHECK_NAME)


def _rid() -> str:
    return f"jewelry-gen-{uuid.uuid4()}"


def _request(resources: dict[str, Any], instance: dg.DagsterInstance, rid: str) -> None:
    """A whole request as the gateway makes it: upload blob, partition, a full run."""
    store = resources["blob_store"]
    image, _ = synthetic_ring(300, 400)
    upload = store.put(f"requests/{rid}/upload", to_jpeg(image))
    instance.add_dynamic_partitions(PARTITIONS_NAME, [rid])
    result = dg.materialize(
        ALL_ASSETS,
        partition_key=rid,
        instance=instance,
        resources=resources,
        tags={OWNER_TAG: "shop-a"},
        run_config={
            "ops": run_config_ops(
                {
                    "original_image": {"image_uri": upload},
                    "background_removed_image": {"mode": "keep"},
                    "jewelry_mask": {"points": [RING_CLICK]},
                }
            )
        },
    )
    assert result.success


def _light_request(store: LocalBlobStore, instance: dg.DagsterInstance, rid: str, status: dg.DagsterRunStatus) -> None:
    """A request's partition, upload blob and one run record, without executing anything."""
    store.put(f"requests/{rid}/upload", b"jpeg")
    instance.add_dynamic_partitions(PARTITIONS_NAME, [rid])
    instance.add_run(dg.DagsterRun(job_name="jewelry_generation", status=status, tags={PARTITION_TAG: rid}))


def _check_run_ids(instance: dg.DagsterInstance) -> set[str]:
    history = instance.event_log_storage.get_asset_check_execution_history(FIDELITY, limit=1000)
    return {record.run_id for record in history}


def test_old_requests_go_entirely_and_recent_or_running_ones_stay(tmp_path: Path) -> None:
    settings = PipelineSettings(local_blob_root=str(tmp_path), local_backends="instant")
    resources = build_resources(settings)
    store: LocalBlobStore = resources["blob_store"]
    old, busy_old, recent = _rid(), _rid(), _rid()
    with dg.instance_for_test() as instance:
        _request(resources, instance, old)  # the one really executed: events, check rows, blobs
        # An old request with a run still going (a /generate or a re-generation): it must stay.
        _light_request(store, instance, busy_old, dg.DagsterRunStatus.SUCCESS)
        running = dg.DagsterRun(
            job_name="jewelry_generate", status=dg.DagsterRunStatus.STARTED, tags={PARTITION_TAG: busy_old}
        )
        instance.add_run(running)
        _light_request(store, instance, recent, dg.DagsterRunStatus.SUCCESS)
        # The cutoff is the recent request's creation: runs strictly before it are old.
        (recent_run,) = instance.get_run_records(dg.RunsFilter(tags={PARTITION_TAG: recent}))
        cutoff = recent_run.create_timestamp
        assert instance.get_run_record_by_id(running.run_id).create_timestamp < cutoff  # type: ignore[union-attr]
        old_runs = {r.run_id for r in instance.get_runs(dg.RunsFilter(tags={PARTITION_TAG: old}))}
        assert old_runs <= _check_run_ids(instance)

        report = run_retention(instance, store, 30, 100, 365, now=cutoff + timedelta(days=30))

        assert (report.requests_removed, report.requests_skipped_running) == (1, 1)
        assert report.runs_removed == 1 and report.check_rows_removed >= 1 and report.blobs_removed > 5
        assert instance.get_runs(dg.RunsFilter(tags={PARTITION_TAG: old})) == []
        assert set(instance.get_dynamic_partitions(PARTITIONS_NAME)) == {busy_old, recent}
        flux = dg.AssetKey(AssetName.FLUX_GENERATION)
        assert not instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=flux, asset_partitions=[old]), limit=1
        ).records
        assert not old_runs & _check_run_ids(instance)  # the runtime.storage.check_rows canary
        assert not (tmp_path / store.container / "requests" / old).exists()
        tombstone = json.loads(store.get_path(tombstone_path(old)))
        assert tombstone["owner"] == "shop-a"
        for kept in (busy_old, recent):
            assert instance.get_runs(dg.RunsFilter(tags={PARTITION_TAG: kept}))
            assert store.exists_path(f"requests/{kept}/upload")

        # A second pass finds nothing more to do; tombstones expire after their own lifetime.
        again = run_retention(instance, store, 30, 100, 365, now=cutoff + timedelta(days=30))
        assert again.requests_removed == 0 and again.tombstones_expired == 0
        assert run_retention(instance, store, 0, 100, 1, now=cutoff + timedelta(days=2)).tombstones_expired == 1
        assert not store.exists_path(tombstone_path(old))


def test_zero_days_keeps_everything(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path))
    with dg.instance_for_test() as instance:
        rid = _rid()
        _light_request(store, instance, rid, dg.DagsterRunStatus.SUCCESS)
        report = run_retention(instance, store, 0, 100, 365, now=datetime.now(UTC) + timedelta(days=999))
        assert report.requests_removed == 0 and instance.get_dynamic_partitions(PARTITIONS_NAME) == [rid]


def test_the_job_reports_its_counts_as_metadata_and_the_schedule_follows_the_setting(tmp_path: Path) -> None:
    settings = PipelineSettings(local_blob_root=str(tmp_path), local_backends="instant", retention_days=30)
    job, schedule = build_retention(settings)
    assert job.name == RETENTION_JOB and schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    off = build_retention(PipelineSettings(retention_days=0))[1]
    assert off.default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance,
            resources={"blob_store": build_resources(settings)["blob_store"]},
            run_config={"ops": {"remove_expired_requests": {"config": {"retention_days": 1}}}},
        )
        (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        metadata = output.event_specific_data.metadata  # type: ignore[union-attr]
        assert metadata["requests_removed"].value == 0 and metadata["retention_days"].value == 1


def test_get_answers_410_for_a_removed_workflow_and_404_for_one_never_seen(tmp_path: Path) -> None:
    removed, unknown = _rid(), _rid()
    with gateway_with_fake_dagster(tmp_path) as (client, _):
        store = client.app.state.store  # type: ignore[attr-defined]
        store.put(tombstone_path(removed), json.dumps({"removedAt": "2026-01-02T03:04:05+00:00"}).encode())
        gone = client.get(f"/workflow/{removed}")
        assert gone.status_code == 410, gone.text
        assert "removed on 2026-01-02" in gone.json()["detail"]
        assert_refused(client.get(f"/workflow/{unknown}"), 404, no_workflow(unknown))


def test_retention_on_postgresql_reuses_its_connections(tmp_path: Path) -> None:
    """Dagster's PostgreSQL storages connect once a call; `delete_run` alone makes ~7 calls.
    Retention keeps a pool instead, so removing many requests costs a handful of sessions."""
    requests = 20
    store = LocalBlobStore(root=str(tmp_path))
    with (
        postgres_database() as url,
        dg.instance_for_test(
            # SQLAlchemy 2.1 maps a plain postgresql:// to psycopg 3; dagster-postgres ships psycopg2.
            overrides={
                "storage": {"postgres": {"postgres_url": url.replace("postgresql://", "postgresql+psycopg2://")}}
            }
        ) as instance,
    ):
        for _ in range(requests):
            _light_request(store, instance, _rid(), dg.DagsterRunStatus.SUCCESS)
        before = pg_sessions_opened(url)
        report = run_retention(instance, store, 1, 100, 365, now=datetime.now(UTC) + timedelta(days=2))
        opened = pg_sessions_opened(url) - before
    assert report.requests_removed == requests and report.runs_removed == requests
    # Pooled: one a storage and a few for set-up; one a call would be ~7 a request.
    assert opened <= 12, f"{opened} PostgreSQL sessions to remove {requests} requests"


def test_one_retention_run_removes_at_most_retention_max_requests_oldest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README, Retention: "at most `RETENTION_MAX_REQUESTS` (20,000) a run", read from the
    environment as a deployment sets it; the rest waits for the next run."""
    import jewel_dagster.defs.retention as retention

    class _InAMonth(datetime):  # the job's clock, a month on: every request made here is expired
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> _InAMonth:
            return cls.fromtimestamp((datetime.now(tz) + timedelta(days=31)).timestamp(), tz)

    monkeypatch.setenv("RETENTION_MAX_REQUESTS", "2")
    monkeypatch.setenv("RETENTION_DAYS", "30")
    settings = PipelineSettings(local_blob_root=str(tmp_path), local_backends="instant")
    assert settings.retention_max_requests == 2
    job, _ = build_retention(settings)
    store: LocalBlobStore = build_resources(settings)["blob_store"]
    requests = [_rid() for _ in range(3)]  # made in this order: the oldest first
    with dg.instance_for_test() as instance:
        for rid in requests:
            _light_request(store, instance, rid, dg.DagsterRunStatus.SUCCESS)
        monkeypatch.setattr(retention, "datetime", _InAMonth)
        result = job.execute_in_process(instance=instance, resources={"blob_store": store})
        (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        assert output.event_specific_data.metadata["requests_removed"].value == 2  # type: ignore[union-attr]
        assert instance.get_dynamic_partitions(PARTITIONS_NAME) == requests[2:], "the two oldest go first"
        assert [store.exists_path(tombstone_path(rid)) for rid in requests] == [True, True, False]
