"""Fidelity check, and the re-generation sweep the sensor and schedule run, in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import dagster as dg
import pytest
import sqlalchemy as sa

from jewel_dagster.contract import CODE_VERSION_TAG, PARTITION_TAG, REGENERATE_JOB, AssetName, run_config_ops
from jewel_dagster.contract import REGENERATE_ATTEMPT_TAG as ATTEMPT_TAG
from jewel_dagster.contract import REGENERATE_REASON_TAG as REASON_TAG
from jewel_dagster.defs.assets import ALL_ASSETS, generate_images
from jewel_dagster.defs.regeneration import (
    PRIORITY_TAG,
    REGENERATE_VERSION_TAG,
    REGENERATION_PRIORITY,
    build_regeneration_automation,
    current_flux_version,
    regeneration_requests,
    sweep_page,
)
from jewel_dagster.defs.request_runs import BACKGROUND_TAG
from jewel_dagster.resources.local_services import InstantGenerator
from jewel_dagster.resources.selection import build_resources as build_local_resources
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.vision import imaging
from tests.support.instances import stack_storage_instance
from tests.support.photos import synthetic_ring, to_jpeg

# What the regenerate job makes (named here, not read from the code under test).
REGENERATED = ["flux_generation", "gemini_generation", "flux_metrics"]


def build_resources(settings: PipelineSettings) -> dict[str, Any]:
    """The local resources with an instant Gemini: the fidelity check and the regeneration are
    about the Flux image; Gemini's studio backdrop, encoded and signed at every run, cost CPU
    for pixels nothing here asserts."""
    return {**build_local_resources(settings), "gemini_generator": InstantGenerator()}


def _check_passed(result: dg.ExecuteInProcessResult) -> bool:
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 1 and evaluations[0].check_name == "fidelity"
    return evaluations[0].passed


def _full_run(resources: dict[str, Any], instance: dg.DagsterInstance, rid: str) -> dg.ExecuteInProcessResult:
    """A request run to its first generation. The ring's exact mask is supplied (what the
    regeneration is about starts after the mask): segmenting it from a click cost about 40 % of
    the run's CPU; the fidelity check still segments the generated image for real."""
    store = resources["blob_store"]
    image, truth = synthetic_ring(900, 1200)
    upload = store.put(f"requests/{rid}/upload", to_jpeg(image))
    mask_uri = store.put(f"requests/{rid}/mask.png", imaging.encode_png(truth))
    instance.add_dynamic_partitions("requests", [rid])
    return dg.materialize(
        ALL_ASSETS,
        partition_key=rid,
        instance=instance,
        resources=resources,
        run_config={
            "ops": run_config_ops(
                {
                    "original_image": {"image_uri": upload},
                    "background_removed_image": {"mode": "keep"},
                    "jewelry_mask": {"mask_uri": mask_uri},
                }
            )
        },
    )


def test_failed_check_is_regenerated_once_with_a_new_seed_and_then_passes(tmp_path: Path) -> None:
    # The local Flux stand-in bleeds the jewelry by 30 px, but only for seed 0 (first tries).
    resources = build_resources(
        PipelineSettings(local_blob_root=str(tmp_path), local_flux_grow_px=30, local_flux_grow_seeds=[0])
    )
    settings = PipelineSettings(local_blob_root=str(tmp_path))
    with stack_storage_instance() as instance:
        good = _full_run(build_resources(settings), instance, "good")
        assert _check_passed(good)
        bad = _full_run(resources, instance, "bad")
        assert bad.success and not _check_passed(bad)  # a failed check does not fail the run

        requests = list(regeneration_requests(instance, current_flux_version(), max_attempts=3))
        assert [r.partition_key for r in requests] == ["bad"]
        request = requests[0]
        assert request.tags[REASON_TAG] == "failed-check" and request.tags[ATTEMPT_TAG] == "1"
        assert request.run_config["ops"]["generate_images"]["config"]["generations"]["seed"] == 1

        rerun = dg.materialize(
            ALL_ASSETS,
            selection=REGENERATED,
            partition_key="bad",
            instance=instance,
            resources=resources,
            run_config={"ops": request.run_config["ops"]},  # materialize() has no json logger
            tags=request.tags,
        )
        assert _check_passed(rerun)
        instance.add_dynamic_partitions("requests", ["not-generated-yet"])  # never generated: nothing to redo
        assert list(regeneration_requests(instance, current_flux_version(), max_attempts=3)) == []

        # A new generator version marks the old generations stale (this used to be a test of its
        # own, with a full run of its own: the two generated requests here serve it).
        _a_new_generator_version_marks_old_generations_stale(instance, build_resources(settings))


def _a_new_generator_version_marks_old_generations_stale(
    instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    """Both generated requests ("good", "bad") become stale under "model-v2"; re-generating
    "good" with the bumped generator leaves only "bad" to do."""
    bumped = generate_images.map_asset_specs(
        lambda spec: (
            spec.replace_attributes(code_version="model-v2") if spec.key.path[-1] == "flux_generation" else spec
        )
    )
    stale = {str(r.partition_key): r for r in regeneration_requests(instance, "model-v2", max_attempts=3)}
    assert sorted(stale) == ["bad", "good"]
    assert all(r.tags[REASON_TAG] == "stale" for r in stale.values())
    assets = [bumped if a is generate_images else a for a in ALL_ASSETS]
    dg.materialize(
        assets,
        selection=REGENERATED,
        partition_key="good",
        instance=instance,
        resources=resources,
        run_config={"ops": stale["good"].run_config["ops"]},  # materialize() has no json logger
        tags=stale["good"].tags,
    )
    assert [r.partition_key for r in regeneration_requests(instance, "model-v2", max_attempts=3)] == ["bad"]


def test_attempts_are_bounded(tmp_path: Path) -> None:
    resources = build_resources(PipelineSettings(local_blob_root=str(tmp_path), local_flux_grow_px=30))
    with stack_storage_instance() as instance:
        _full_run(resources, instance, "always-bad")
        for attempt in (1, 2):
            (request,) = regeneration_requests(instance, current_flux_version(), max_attempts=2)
            assert request.tags[ATTEMPT_TAG] == str(attempt)
            dg.materialize(
                ALL_ASSETS,
                selection=REGENERATED,
                partition_key="always-bad",
                instance=instance,
                resources=resources,
                run_config={"ops": request.run_config["ops"]},  # materialize() has no json logger
                tags=request.tags,
            )
        assert list(regeneration_requests(instance, current_flux_version(), max_attempts=2)) == []


def test_the_schedule_asks_for_what_the_sensor_asks_for() -> None:
    sensor, schedule = build_regeneration_automation(PipelineSettings(regeneration_max_attempts=3))
    with stack_storage_instance() as instance:
        # What a run whose check failed leaves (the first test makes one for real): a current
        # Flux image, and a failed `fidelity` result on the partition.
        _generated(instance, "bad", current_flux_version())
        _failed_check(instance, "bad")

        # Invoked directly with a context, as the daemon would evaluate them on a tick.
        ticked = list(schedule(dg.build_schedule_context(instance=instance)))
        sensed = list(sensor(dg.build_sensor_context(instance=instance)))
        assert len(ticked) == 1 and isinstance(ticked[0], dg.RunRequest)
        (request,) = ticked
        assert request.partition_key == "bad" and request.run_key == "bad:failed-check:1"
        assert request.tags[REASON_TAG] == "failed-check" and request.tags[ATTEMPT_TAG] == "1"
        assert request.run_config == {
            "ops": {"generate_images": {"config": {"generations": {"seed": 1}}}},
            "loggers": {"json": {}},
        }
        assert ticked == sensed
        assert schedule.job_name == sensor.job_name == REGENERATE_JOB


@pytest.mark.parametrize("enabled", [True, False])
def test_the_schedule_and_sensor_default_status_follow_the_settings(enabled: bool) -> None:
    sensor, schedule = build_regeneration_automation(
        PipelineSettings(
            regeneration_schedule_enabled=enabled,
            regeneration_sensor_enabled=not enabled,
            regeneration_cron="15 4 * * 1",
        )
    )
    running, stopped = dg.DefaultScheduleStatus.RUNNING, dg.DefaultScheduleStatus.STOPPED
    assert schedule.default_status == (running if enabled else stopped)
    assert sensor.default_status == (dg.DefaultSensorStatus.STOPPED if enabled else dg.DefaultSensorStatus.RUNNING)
    assert schedule.cron_schedule == "15 4 * * 1"


def _generated(instance: dg.DagsterInstance, partition: str, version: str) -> None:
    """A Flux materialization of `partition` by generator `version`, without running anything."""
    instance.add_dynamic_partitions("requests", [partition])
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=AssetName.FLUX_GENERATION, partition=partition, tags={CODE_VERSION_TAG: version}
        )
    )


def _failed_check(instance: dg.DagsterInstance, partition: str) -> None:
    """A failed `fidelity` result on `partition`, without running anything."""
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(str(AssetName.FLUX_METRICS)), check_name="fidelity", passed=False, partition=partition
        )
    )


def test_the_sensor_walks_every_partition_a_page_a_tick_with_bounded_runs() -> None:
    settings = PipelineSettings(regeneration_page_size=5, regeneration_max_runs_per_tick=3)
    sensor, _ = build_regeneration_automation(settings)
    stale = [f"r{i:02d}" for i in range(14)]
    with stack_storage_instance() as instance:
        for partition in stale:
            _generated(instance, partition, "old-model")
        _generated(instance, "busy", "old-model")  # has a run going: left alone
        instance.add_run(
            dg.DagsterRun(job_name=REGENERATE_JOB, status=dg.DagsterRunStatus.STARTED, tags={PARTITION_TAG: "busy"})
        )
        _generated(instance, "current", current_flux_version())  # up to date: nothing to do
        instance.add_dynamic_partitions("requests", ["preprocess-only"])  # never generated

        requested: list[str] = []
        cursor = None
        for _ in range(9):  # 3 runs a tick: each tick goes on just past the last partition it requested
            context = dg.build_sensor_context(instance=instance, cursor=cursor)
            tick = list(sensor(context))
            cursor = context.cursor
            assert len(tick) <= 3
            for request in tick:
                assert isinstance(request, dg.RunRequest)
                assert request.tags[PRIORITY_TAG] == REGENERATION_PRIORITY and int(REGENERATION_PRIORITY) < 0
                assert request.tags[BACKGROUND_TAG] == "regeneration" and request.tags[REASON_TAG] == "stale"
                # The daemon would launch it: from then on the partition has a run in progress.
                instance.add_run(
                    dg.DagsterRun(
                        job_name=REGENERATE_JOB,
                        status=dg.DagsterRunStatus.NOT_STARTED,
                        tags={**request.tags, PARTITION_TAG: str(request.partition_key)},
                    )
                )
                requested.append(str(request.partition_key))
        assert sorted(requested) == stale  # every partition reached, each once


def test_a_page_costs_the_same_queries_whatever_its_size() -> None:
    """At 100,000s of partitions a tick must stay a few batched queries (issue 17): the
    question "which of these partitions has a run going" is asked once a page, not once a
    partition (a tick of 500 took ~8 s on PostgreSQL that way), and so are the newest
    materializations and the newest fidelity results. Counted as the SQL statements the storages
    run, whichever storage API a lookup goes through (counting two instance methods missed a
    lookup through the event log storage, which could then run once a partition unseen)."""
    with stack_storage_instance() as instance:
        for i in range(40):
            _generated(instance, f"r{i:02d}", current_flux_version() if i % 2 else "old-model")

        def statements(page_size: int) -> int:
            executed: list[str] = []

            def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
                executed.append(statement)

            sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)
            try:
                sweep = sweep_page(instance, None, current_flux_version(), 3, page_size, 1000)
            finally:
                sa.event.remove(sa.engine.Engine, "before_cursor_execute", count)
            assert sweep.partitions_seen == page_size and len(sweep.requests) == page_size // 2
            return len(executed)

        small, large = statements(4), statements(40)
        assert 0 < small == large <= 12, (small, large)  # 9 in all on 2026-12-07


def test_background_runs_have_their_own_limit_in_every_instance_file() -> None:

    from devtools.instance_config import load_overlays

    # The base, and the overlays laid over it as devtools.instance_config merges them.
    files = {
        "dagster.yaml": load_overlays([]),
        "dagster.postgres.yaml": load_overlays(["dagster.postgres.yaml"]),
        "dagster.celery.yaml": load_overlays(["dagster.postgres.yaml", "dagster.celery.yaml"]),
    }
    for name, config in files.items():
        runs = config["concurrency"]["runs"]
        limits = {
            (limit["key"], limit["value"]): limit["limit"]
            for limit in runs["tag_concurrency_limits"]
            if isinstance(limit["value"], str)  # not the per-caller rule (a value per owner)
        }
        assert limits[(BACKGROUND_TAG, "regeneration")] < runs["max_concurrent_runs"], name
        assert limits[(BACKGROUND_TAG, "retention")] == 1, name


def test_a_failed_stale_regeneration_is_tried_again_under_a_new_run_key_a_bounded_number_of_times() -> None:
    # Issue 28: the key was `<partition>:stale:<version>` whatever happened before, and Dagster never
    # launches a run key twice: after one failed run the partition stayed stale for good.
    sensor, _ = build_regeneration_automation(PipelineSettings(regeneration_max_attempts=2))
    with stack_storage_instance() as instance:
        _generated(instance, "r1", "old-model")
        keys = []
        for attempt in (1, 2):
            with mock.patch("jewel_dagster.defs.regeneration.current_flux_version", return_value="model-v2"):
                (request,) = sensor(dg.build_sensor_context(instance=instance))
            assert isinstance(request, dg.RunRequest)
            assert request.tags[REASON_TAG] == "stale" and request.tags[ATTEMPT_TAG] == str(attempt)
            assert request.tags[REGENERATE_VERSION_TAG] == "model-v2"
            keys.append(request.run_key)
            # The run Dagster launched for it failed: the partition is still stale.
            instance.add_run(
                dg.DagsterRun(
                    job_name=REGENERATE_JOB,
                    status=dg.DagsterRunStatus.FAILURE,
                    tags={**request.tags, PARTITION_TAG: "r1"},
                )
            )
        assert keys == ["r1:stale:model-v2:1", "r1:stale:model-v2:2"]
        with mock.patch("jewel_dagster.defs.regeneration.current_flux_version", return_value="model-v2"):
            assert list(sensor(dg.build_sensor_context(instance=instance))) == []  # bounded
        # A newer version starts counting again.
        (request,) = regeneration_requests(instance, "model-v3", max_attempts=2)
        assert request.run_key == "r1:stale:model-v3:1"


def test_the_walk_moves_on_when_a_page_needs_more_runs_than_a_tick_and_dagster_skips_them() -> None:
    # Issue 28: with more stale partitions on a page than a tick's run limit the cursor stayed on
    # the page; when Dagster skipped those runs (their keys were used before) no run ever made the
    # partitions busy, and every tick asked for the same first ones.
    sensor, _ = build_regeneration_automation(
        PipelineSettings(regeneration_page_size=5, regeneration_max_runs_per_tick=2)
    )
    stale = [f"r{i}" for i in range(6)]
    with stack_storage_instance() as instance:
        for partition in stale:
            _generated(instance, partition, "old-model")
        requested: list[str] = []
        cursor = None
        for _ in range(3):  # no run is ever added: Dagster skipped every one
            context = dg.build_sensor_context(instance=instance, cursor=cursor)
            tick = list(sensor(context))
            cursor = context.cursor
            assert len(tick) == 2
            requested += [str(r.partition_key) for r in tick if isinstance(r, dg.RunRequest)]
        assert requested == stale
