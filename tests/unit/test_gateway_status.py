"""Run status and the run's planned and materialized assets -> the seed's status, currentStep and
progress (no server needed)."""

from __future__ import annotations

from typing import Any

import dagster as dg
import httpx
import pytest

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError, DagsterUnavailable, readable_error
from gateway.dagster_api.models import RunAssets, RunInfo, StepStat
from gateway.settings import GatewaySettings
from gateway.status import position_of, seed_step_of_failure, workflow_status
from gateway.workflow_state import public_error
from jewel_dagster.contract import FULL_JOB

# Today's nine-step layout, and a fat layout (one step makes the assets of several seed steps):
# progress must not depend on which.
NINE_STEPS = {
    "original_image": "original_image",
    "resized_image": "resize_to_canvas",
    "canvas_transform": "resize_to_canvas",
    "zoom_check": "zoom_check",
    "background_removed_image": "background_removed_image",
    "jewelry_mask": "jewelry_mask",
    "refined_mask": "refined_mask",
    "final_mask": "final_mask",
    "flux_generation": "generations",
    "gemini_generation": "generations",
    "flux_metrics": "flux_metrics",
}
FAT_STEPS = {asset: ("prepare" if i < 6 else "generate") for i, asset in enumerate(NINE_STEPS)}
GENERATE = ("refined_mask", "final_mask", "flux_generation", "gemini_generation", "flux_metrics")


def run(
    status: str,
    done: tuple[str, ...] = (),
    planned: tuple[str, ...] | None = None,
    layout: dict[str, str] = NINE_STEPS,
    **steps: str,
) -> RunInfo:
    """A run that plans `planned` (every asset when None), has materialized `done`, and whose
    steps have the statuses given."""
    plan = {asset: layout[asset] for asset in (planned if planned is not None else tuple(layout))}
    assets = RunAssets(plan, frozenset(done))
    return RunInfo("r", FULL_JOB, status, [StepStat(k, v, 0.0) for k, v in steps.items()], assets=assets)


@pytest.mark.parametrize("layout", [NINE_STEPS, FAT_STEPS], ids=["nine-steps", "fat-steps"])
@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (dict(status="QUEUED"), ("RUNNING", "UPLOADING_IMAGE", 5)),
        (dict(status="STARTED", done=("original_image",)), ("RUNNING", "RESIZING_IMAGE", 15)),
        (dict(status="STARTED", done=("original_image", "resized_image")), ("RUNNING", "RESIZING_IMAGE", 15)),
        (
            dict(status="STARTED", done=("original_image", "resized_image", "canvas_transform", "zoom_check")),
            ("RUNNING", "REMOVING_BACKGROUND", 30),
        ),
        # A generate run (or a re-execution from generate_images) starts where it starts.
        (dict(status="QUEUED", planned=GENERATE), ("RUNNING", "REFINING_MASK", 55)),
        (dict(status="STARTED", planned=GENERATE, done=GENERATE[:2]), ("RUNNING", "GENERATING_IMAGES", 70)),
        # The UI's "Materialize selected" of the generations: 70 % from the first look.
        (dict(status="QUEUED", planned=GENERATE[2:]), ("RUNNING", "GENERATING_IMAGES", 70)),
        (dict(status="STARTED", planned=GENERATE[2:], done=GENERATE[2:]), ("RUNNING", "GENERATING_IMAGES", 70)),
        (dict(status="SUCCESS", planned=GENERATE[2:]), ("COMPLETED", "COMPLETED", 100)),
        (dict(status="FAILURE", done=("original_image",)), ("FAILED", "RESIZING_IMAGE", 15)),
        (dict(status="CANCELED", done=("original_image", "resized_image")), ("CANCELLED", "RESIZING_IMAGE", 15)),
        # Asked to stop, not stopped: it may still complete, so not CANCELLED yet.
        (dict(status="CANCELING", done=("original_image",)), ("RUNNING", "RESIZING_IMAGE", 15)),
    ],
)
def test_position(info: dict[str, Any], expected: tuple[str, str, int], layout: dict[str, str]) -> None:
    p = position_of(run(**info, layout=layout))
    assert (p.status, p.current_step, p.progress) == expected


def test_a_run_whose_plan_is_not_read_yet_is_at_the_first_step() -> None:
    p = position_of(RunInfo("r", FULL_JOB, "QUEUED"))
    assert (p.status, p.current_step, p.progress) == ("RUNNING", "UPLOADING_IMAGE", 5)


def test_a_plan_read_while_it_is_written_does_not_count() -> None:
    """Dagster stores the run, then its planned events one by one, then submits it: a read in
    between saw a part of the plan (the e2e GraphQL test saw 30 %, 15 %, then 5 % once queued)."""
    partial = run("NOT_STARTED", planned=("background_removed_image", "jewelry_mask"))
    assert position_of(partial).progress == 5
    assert position_of(run("QUEUED", planned=("background_removed_image", "jewelry_mask"))).progress == 30


def test_a_step_that_ended_without_an_asset_is_past_it() -> None:
    """An output a step did not yield (optional, skipped) does not hold progress at its step."""
    skipped = run("STARTED", done=("original_image",), resize_to_canvas="SUCCESS", original_image="SUCCESS")
    assert position_of(skipped).current_step == "CHECKING_ZOOM"
    upstream_failed = run("STARTED", done=("original_image",), resize_to_canvas="SKIPPED")
    assert position_of(upstream_failed).current_step == "CHECKING_ZOOM"


def test_progress_follows_the_materializations_and_never_goes_back() -> None:
    """A fat step reports its assets one by one: each one moves progress on, never back."""
    for layout in (NINE_STEPS, FAT_STEPS):
        order = list(layout)
        seen = [position_of(run("STARTED", done=tuple(order[:i]), layout=layout)).progress for i in range(len(order))]
        assert seen == sorted(seen) and seen[0] == 5 and seen[-1] == 70, seen
        # Within one fat step, the progress moves as its outputs are materialized.
        assert (
            layout is NINE_STEPS
            or len({p for p, asset in zip(seen, order, strict=True) if layout[asset] == "prepare"}) == 5
        )


# Every Dagster run status (and one Dagster may add later) -> (status, currentStep, progress), on a
# full-pipeline run whose first asset is materialized (its step failed for FAILURE), so the
# current step shows whether it came from the assets or from the run status.
MIDWAY = ("original_image",)
UNKNOWN = "SOME_FUTURE_STATUS"
EVERY_RUN_STATUS: dict[str, tuple[tuple[str, ...], tuple[str, str, int]]] = {
    # Not started yet: nothing materialized, so the first step.
    "QUEUED": ((), ("RUNNING", "UPLOADING_IMAGE", 5)),
    "NOT_STARTED": ((), ("RUNNING", "UPLOADING_IMAGE", 5)),
    "STARTING": ((), ("RUNNING", "UPLOADING_IMAGE", 5)),
    "STARTED": (MIDWAY, ("RUNNING", "RESIZING_IMAGE", 15)),
    "MANAGED": (MIDWAY, ("RUNNING", "RESIZING_IMAGE", 15)),
    "SUSPENDED": (MIDWAY, ("RUNNING", "RESIZING_IMAGE", 15)),
    # Done: COMPLETED and 100 whatever the assets say.
    "SUCCESS": (MIDWAY, ("COMPLETED", "COMPLETED", 100)),
    "FAILURE": (MIDWAY, ("FAILED", "RESIZING_IMAGE", 15)),
    # A cancel asked for is not a cancel done: the run may still end SUCCESS (issue 28).
    "CANCELING": (MIDWAY, ("RUNNING", "RESIZING_IMAGE", 15)),
    "CANCELED": (MIDWAY, ("CANCELLED", "RESIZING_IMAGE", 15)),
    # A status this gateway does not know yet: still running, rather than a false end.
    UNKNOWN: (MIDWAY, ("RUNNING", "RESIZING_IMAGE", 15)),
}


@pytest.mark.parametrize("run_status", list(EVERY_RUN_STATUS))
def test_every_run_status_maps_onto_the_seed(run_status: str) -> None:
    done, expected = EVERY_RUN_STATUS[run_status]
    failed = {"resize_to_canvas": "FAILURE"} if run_status == "FAILURE" else {}
    p = position_of(run(run_status, done=done, **failed))
    assert (p.status, p.current_step, p.progress) == expected
    assert workflow_status(run_status) == expected[0]
    assert p.failed_op == ("resize_to_canvas" if run_status == "FAILURE" else None)


def test_the_status_table_covers_every_dagster_run_status() -> None:
    # A status a new Dagster adds must get a deliberate mapping (and a row above), not the fallback.
    assert set(EVERY_RUN_STATUS) - {UNKNOWN} == {s.value for s in dg.DagsterRunStatus}
    assert UNKNOWN not in {s.value for s in dg.DagsterRunStatus}


def test_failed_step_is_reported() -> None:
    p = position_of(run("FAILURE", done=("original_image",), original_image="SUCCESS", resize_to_canvas="FAILURE"))
    assert p.failed_op == "resize_to_canvas"


@pytest.mark.parametrize(
    ("layout", "failed_step", "done", "expected"),
    [
        (NINE_STEPS, "final_mask", GENERATE[:1], "UPLOADING_MASK"),
        (NINE_STEPS, "refined_mask", (), "REFINING_MASK"),
        # One fat step made the refined mask, then failed on the final mask: that is where it stopped.
        ({**FAT_STEPS, "refined_mask": "generate"}, "generate", GENERATE[:1], "UPLOADING_MASK"),
        (NINE_STEPS, "no_such_step", (), None),
    ],
)
def test_the_failed_seed_step_is_where_the_failed_step_stopped(
    layout: dict[str, str], failed_step: str, done: tuple[str, ...], expected: str | None
) -> None:
    failed = run("FAILURE", planned=GENERATE, done=done, layout=layout, **{failed_step: "FAILURE"})
    assert seed_step_of_failure(failed, failed_step) == expected


def test_readable_error_drops_the_exception_class() -> None:
    assert readable_error("dagster._core.definitions.events.Failure: the mask is empty\n  stack") == "the mask is empty"
    assert readable_error("the mask is empty: add jewelry") == "the mask is empty: add jewelry"


def test_a_failed_run_that_dagster_will_retry_is_still_running() -> None:
    failed = run("FAILURE", original_image="FAILURE")
    assert position_of(failed).status == "FAILED"
    retried = RunInfo("r", FULL_JOB, "FAILURE", failed.steps, {"dagster/will_retry": "true"}, assets=failed.assets)
    assert (position_of(retried).status, position_of(retried).current_step) == ("RUNNING", "UPLOADING_IMAGE")
    final = RunInfo("r", FULL_JOB, "FAILURE", failed.steps, {"dagster/will_retry": "false"})
    assert position_of(final).status == "FAILED"


def test_failure_messages_keep_internal_addresses_to_the_log() -> None:
    message = "SAM3 (http://10.0.0.7:9000/sam3/segment) timed out after 120.0 s; also https://x.internal/a?b=c"
    shown = public_error(message, "0123456789abcdef")
    assert "10.0.0.7" not in shown and "x.internal" not in shown and "SAM3" in shown and "timed out" in shown
    assert "(run 01234567;" in shown
    assert public_error("the mask is empty", "r") == "the mask is empty"


def test_a_failure_is_final_only_once_dagster_decided_about_its_retry() -> None:
    """FAILURE is stored before the `dagster/will_retry` tag: in between, it is not yet FAILED."""
    ended = 1_000_000.0

    def failed(tags: dict[str, str]) -> RunInfo:
        return RunInfo("r", FULL_JOB, "FAILURE", [StepStat("original_image", "FAILURE", 0.0)], tags, ended)

    assert position_of(failed({}), now=ended + 0.1).status == "RUNNING"  # the tag is on its way
    assert position_of(failed({}), now=ended + 10).status == "FAILED"  # no run retries configured
    assert position_of(failed({"dagster/will_retry": "true"}), now=ended + 60).status == "RUNNING"
    assert position_of(failed({"dagster/will_retry": "false"}), now=ended + 0.1).status == "FAILED"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ({"__typename": "UnauthorizedError", "message": "no dynamic partitions definition"}, DagsterUnavailable),
        ({"__typename": "PythonError", "message": "boom"}, DagsterError),
    ],
)  # fmt: skip
def test_a_partition_refused_while_the_code_location_reloads_is_unavailable_not_an_error(
    answer: dict[str, str], error: type[DagsterError]
) -> None:
    """After a code server restart the webserver answers UnauthorizedError until its location is
    loaded again: the gateway says 503 (retry soon), not 502."""
    runs = DagsterRuns(GatewaySettings())
    runs.transport.http = httpx.Client(
        transport=httpx.MockTransport(lambda _: httpx.Response(200, json={"data": {"addDynamicPartition": answer}}))
    )
    with pytest.raises(error) as raised:
        runs.add_partition("jewelry-gen-x")
    assert type(raised.value) is error
