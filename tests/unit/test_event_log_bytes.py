"""What one request's run writes to Dagster's event log stays lean (issue 28: <= 100 KB of
storage a request on PostgreSQL; `benchmarks.storage_size --postgres --breakdown` says where).

Every asset keeps its materialization with its metadata and preview (the UI's asset pages, the
gateway's `path` and `backend`); what nothing reads is not written twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from dagster import DagsterEventType

from jewel_dagster.contract import run_config_ops
from jewel_dagster.defs.assets import ALL_ASSETS
from jewel_dagster.resources.blob_store import BlobStore
from jewel_dagster.runtime.instance_plugins import pool_claims
from tests.support.photos import coffee_jpeg


def _run_events(resources: dict[str, Any], home: Path) -> list[dg.EventLogEntry]:
    """A whole request's run in-process, stored by the event log storage dagster.yaml names."""
    store: BlobStore = resources["blob_store"]
    rid = "jewelry-gen-lean-events"
    upload = store.put(f"requests/{rid}/upload", coffee_jpeg())
    ops = {"original_image": {"image_uri": upload}, "jewelry_mask": {"points": [{"x": 0.45, "y": 0.42, "label": 1}]}}
    storage = {
        "module": pool_claims.__name__,
        "class": pool_claims.QuickClaimSqliteEventLogStorage.__name__,
        "config": {"base_dir": str(home / "history")},
    }
    with dg.instance_for_test(overrides={"event_log_storage": storage}, temp_dir=str(home)) as instance:
        instance.add_dynamic_partitions("requests", [rid])
        result = dg.materialize(
            ALL_ASSETS,
            partition_key=rid,
            instance=instance,
            resources=resources,
            run_config={"ops": run_config_ops(ops)},
        )
        assert result.success
        return list(instance.all_logs(result.run_id))


def test_a_request_writes_each_assets_metadata_once(local_resources: dict[str, Any], tmp_path: Path) -> None:
    events = _run_events(local_resources, tmp_path)
    by_type: dict[str, list[dg.EventLogEntry]] = {}
    for entry in events:
        kind = entry.dagster_event.event_type_value if entry.dagster_event else "LOG"
        by_type.setdefault(kind, []).append(entry)

    materializations = by_type[DagsterEventType.ASSET_MATERIALIZATION.value]
    assert len(materializations) == 11
    for entry in materializations:  # the UI's asset page and the gateway still have it all
        assert entry.asset_materialization is not None
        meta = entry.asset_materialization.metadata
        assert {"path", "artifact"} <= set(meta), meta.keys()
        if entry.asset_materialization.asset_key.path[-1] not in ("canvas_transform", "zoom_check", "flux_metrics"):
            assert str(meta["preview"].value).startswith("![preview](data:image/"), meta.keys()
            assert {"width", "height", "seconds"} <= set(meta)

    # No HANDLED_OUTPUT events: the steps store their blobs themselves, and the materialization
    # names the blob (`path`, `uri`, `artifact`) once.
    assert DagsterEventType.HANDLED_OUTPUT.value not in by_type
    # The step outputs do not carry the metadata again (previews included): nothing reads them.
    for entry in by_type[DagsterEventType.STEP_OUTPUT.value]:
        assert entry.dagster_event is not None
        assert not entry.dagster_event.step_output_data.metadata, entry.dagster_event.step_output_data.metadata


def test_a_request_writes_at_most_49_events_and_82_kb_of_them(local_resources: dict[str, Any], tmp_path: Path) -> None:
    """The whole run, in-process: 49 events and 83,420-83,440 bytes of event text (3 runs) on
    2026-12-05 as our storage stores them, in three steps; four steps (a `refine_mask` step of its
    own) wrote 51 events and ~85,030 bytes, ~92 KB as Dagster's stock storage does, with each step
    event's logging tags and repeated message: runtime/storage/lean_events.py; 62 events and
    ~135 KB before the step outputs lost their metadata copy and the HANDLED_OUTPUT events went.
    The byte limit leaves ~500 bytes for the run's paths (tmp_path is in 11 events: an xdist
    worker's adds ~110 bytes) and timings. A new step, log line or metadata entry shows here first."""
    events = _run_events(local_resources, tmp_path)
    text = sum(len(dg.serialize_value(entry)) for entry in events)
    assert len(events) <= 49, [e.dagster_event.event_type_value if e.dagster_event else "LOG" for e in events]
    assert text <= 82 * 1024, text
