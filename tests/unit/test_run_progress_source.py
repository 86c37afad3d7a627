"""The storage reader places a run by its own planned and materialized assets (real Dagster
storage, small stand-in assets with the pipeline's names), and reads each event once."""

# No `from __future__ import annotations` here: Dagster reads the assets' annotations at run time.
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.models import RunAssets, RunInfo
from gateway.dagster_api.storage_reader import StorageRunReader
from gateway.settings import GatewaySettings
from gateway.status import position_of
from jewel_dagster.contract import FULL_JOB, PARTITION_TAG, PARTITIONS_NAME
from tests.support.e2e_stack import free_port

RID = "jewelry-gen-00000000-0000-0000-0000-0000000000e5"
PARTS = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)


@dg.asset(partitions_def=PARTS)
def refined_mask() -> int:
    return 1


@dg.asset(partitions_def=PARTS)
def final_mask(refined_mask: int) -> int:
    return refined_mask + 1


@dg.multi_asset(
    partitions_def=PARTS,
    outs={name: dg.AssetOut(is_required=False) for name in ("flux_generation", "gemini_generation")},
    ins={"final_mask": dg.AssetIn()},
    can_subset=True,
)
def generations(context: dg.AssetExecutionContext, final_mask: int) -> Iterator[dg.Output[int]]:
    for key in sorted(context.selected_asset_keys):
        yield dg.Output(final_mask, output_name=key.path[-1])


ASSETS = [refined_mask, final_mask, generations]


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.get() as found:
        found.add_dynamic_partitions(PARTITIONS_NAME, [RID])
        yield found


def test_a_subset_run_is_placed_at_the_first_seed_step_it_executes(instance: dg.DagsterInstance) -> None:
    assert dg.materialize(ASSETS, partition_key=RID, instance=instance).success
    reader = StorageRunReader()
    try:
        full = reader.runs_tagged({PARTITION_TAG: RID})
        assert full is not None and full.assets is not None
        assert (
            set(full.assets.planned)
            == set(full.assets.materialized)
            == {
                "refined_mask",
                "final_mask",
                "flux_generation",
                "gemini_generation",
            }
        )
        # The UI's "Materialize selected" of one generation: it plans that one only.
        subset = dg.materialize(ASSETS, selection=["flux_generation"], partition_key=RID, instance=instance)
        assert subset.success
        run = reader.runs_tagged({PARTITION_TAG: RID})
        assert run is not None and run.run_id == subset.run_id and run.assets is not None
        assert run.assets.planned == {"flux_generation": "generations"}
        assert run.assets.materialized == {"flux_generation"}
        assert {s.step_key: s.status for s in run.steps} == {"generations": "SUCCESS"}
        # As it was before its materialization: GENERATING_IMAGES, not the job's first step.
        before = RunInfo(run.run_id, run.job_name, "STARTED", [], run.tags, None, RunAssets(run.assets.planned))
        assert (position_of(before).current_step, position_of(before).progress) == ("GENERATING_IMAGES", 70)
    finally:
        reader.close()


def test_each_event_is_read_once(instance: dg.DagsterInstance) -> None:
    result = dg.materialize(ASSETS, partition_key=RID, instance=instance)
    reader = StorageRunReader()
    try:
        events, cursor = reader.events_after(result.run_id, None)
        kinds = [e.kind for e in events]
        assert kinds.count("ASSET_MATERIALIZATION_PLANNED") == 4 and kinds.count("ASSET_MATERIALIZATION") == 4
        assert reader.events_after(result.run_id, cursor) == ([], cursor)  # nothing new: nothing read
        read: list[int] = []
        original = reader.events_after

        def counted(run_id: str, after: str | None) -> tuple[list, str | None]:  # type: ignore[type-arg]
            found = original(run_id, after)
            read.append(len(found[0]))
            return found

        reader.events._read = counted  # type: ignore[method-assign]
        for _ in range(3):
            reader.runs_tagged({PARTITION_TAG: RID})
        assert read == [len(events), 0, 0], read
    finally:
        reader.close()


def test_a_finished_run_listed_without_progress_is_placed_for_its_webhook(instance: dg.DagsterInstance) -> None:
    """The webhook dispatcher lists finished runs without their events: a FAILED or CANCELLED body
    must still name the step the run stopped at, not the first one."""
    result = dg.materialize(ASSETS, selection=["refined_mask"], partition_key=RID, instance=instance)
    runs = DagsterRuns(GatewaySettings(dagster_port=free_port(), status_source="storage"))
    try:
        listed = RunInfo(result.run_id, FULL_JOB, "CANCELED")
        placed = runs.with_progress(listed)
        assert placed.assets is not None and placed.assets.materialized == {"refined_mask"}
        assert position_of(placed).current_step == "REFINING_MASK"
        assert position_of(listed).current_step == "UPLOADING_IMAGE"  # what it said without
    finally:
        runs.close()
