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
