"""With STATUS_SOURCE=storage the gateway reads a finished request's blob paths and backends
from Dagster's event storage: no GraphQL query, so no webserver CPU, for each completed GET,
webhook or event stream (a GET of a seeded completed workflow took ~500 ms in benchmarks.scale,
most of it in such queries)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterUnavailable
from gateway.settings import GatewaySettings
from jewel_dagster.contract import PARTITIONS_NAME, AssetName
from tests.support.e2e_stack import free_port

RID = "jewelry-gen-00000000-0000-0000-0000-0000000000d7"


def _materialized(instance: dg.DagsterInstance, asset: str, metadata: dict[str, str]) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=RID, metadata=metadata))


def test_paths_and_backends_come_from_the_storage_without_graphql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(PARTITIONS_NAME, [RID])
    _materialized(instance, AssetName.JEWELRY_MASK, {"path": "requests/x/old/jewelry_mask.png", "backend": "old"})
    _materialized(instance, AssetName.JEWELRY_MASK, {"path": "requests/x/new/jewelry_mask.png", "backend": "sam3"})
    _materialized(instance, AssetName.GEMINI_GENERATION, {"model": "gemini-x", "reason": "refused"})
    _materialized(instance, AssetName.FINAL_MASK, {"path": "requests/x/new/final_mask.png"})
    no_webserver = free_port()  # nothing listens: a GraphQL query would fail
    dagster = DagsterRuns(GatewaySettings(dagster_port=no_webserver, status_source="storage"))
    over_graphql = DagsterRuns(GatewaySettings(dagster_port=no_webserver, status_source="graphql"))
    try:
        assert dagster.artifact_path(RID, AssetName.JEWELRY_MASK) == "requests/x/new/jewelry_mask.png"
        assert dagster.artifact_path(RID, AssetName.FLUX_GENERATION) is None  # never materialized
        assert dagster.backends_of(
            RID, [AssetName.JEWELRY_MASK, AssetName.GEMINI_GENERATION, AssetName.FINAL_MASK]
        ) == {
            AssetName.JEWELRY_MASK: "sam3",
            AssetName.GEMINI_GENERATION: "gemini-x",
        }
        with pytest.raises(DagsterUnavailable):  # the same questions over GraphQL need the webserver
            over_graphql.artifact_path(RID, AssetName.JEWELRY_MASK)
    finally:
        dagster.close()
        over_graphql.close()
        instance.dispose()


def test_the_storage_reader_keeps_its_postgresql_connections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dagster's PostgreSQL storages connect once a call outside the webserver: a GET of a
    finished request (~11 reads) spent half its time connecting (benchmarks.scale: p50 544 ms,
    98 ms pooled). The gateway is a long-lived server and keeps its connections."""
    import gc

    from gateway.dagster_api.storage_reader import StorageRunReader
    from jewel_dagster.contract import PARTITION_TAG
    from tests.support.infra import pg_sessions_opened, postgres_database

    with postgres_database() as url:
        # SQLAlchemy 2.1 maps a plain postgresql:// to psycopg 3; dagster-postgres ships psycopg2.
        pg_url = url.replace("postgresql://", "postgresql+psycopg2://")
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
        (tmp_path / "dagster.yaml").write_text(
            f"telemetry:\n  enabled: false\nstorage:\n  postgres:\n    postgres_url: {pg_url}\n"
        )
        reader = StorageRunReader()
        before = pg_sessions_opened(url)
        for _ in range(20):
            assert reader.newest_texts(RID, AssetName.JEWELRY_MASK) == {}
            assert reader.runs_tagged({PARTITION_TAG: RID}) is None
        reader.close()
        del reader
        gc.collect()  # the instance's pool closes with it
        opened = pg_sessions_opened(url) - before
    assert opened <= 3, f"{opened} PostgreSQL sessions for 40 reads"
