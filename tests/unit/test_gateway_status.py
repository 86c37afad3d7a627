"""Run/step status -> the seed's status, currentStep and progress (no server needed)."""

from __future__ import annotations

import dagster as dg
import httpx
import pytest

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.errors import DagsterError, DagsterUnavailable, readable_error
from gateway.dagster_api.models import RunInfo, StepStat
from gateway.settings import GatewaySettings
from gateway.status import position_of, workflow_status
from gateway.workflow_state import public_error
from jewel_dagster.contract import FULL_JOB, GENERATE_JOB, PREPROCESS_JOB


def run(job: str, status: str, **steps: str) -> RunInfo:
    return RunInfo("r", job, status, [StepStat(k, v, 0.0) for k, v in steps.items()])


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (run(FULL_JOB, "QUEUED"), ("RUNNING", "UPLOADING_IMAGE", 5)),
        (run(FULL_JOB, "STARTED", prepare_canvas="IN_PROGRESS"), ("RUNNING", "UPLOADING_IMAGE", 5)),
        (run(FULL_JOB, "STARTED", prepare_canvas="SUCCESS"), ("RUNNING", "REMOVING_BACKGROUND", 30)),
        (
            run(FULL_JOB, "STARTED", prepare_canvas="SUCCESS", segment_jewelry="SUCCESS", refine_mask="IN_PROGRESS"),
            ("RUNNING", "REFINING_MASK", 55),
        ),
        (run(GENERATE_JOB, "QUEUED"), ("RUNNING", "REFINING_MASK", 55)),
        (run(GENERATE_JOB, "STARTED", refine_mask="SUCCESS"), ("RUNNING", "GENERATING_IMAGES", 70)),
        (run(PREPROCESS_JOB, "SUCCESS"), ("COMPLETED", "COMPLETED", 100)),
        (
            run(FULL_JOB, "FAILURE", prepare_canvas="SUCCESS", segment_jewelry="FAILURE"),
            ("FAILED", "REMOVING_BACKGROUND", 30),
        ),
        (run(FULL_JOB, "CANCELED", prepare_canvas="FAILURE"), ("CANCELLED", "UPLOADING_IMAGE", 5)),
        (run(FULL_JOB, "CANCELING"), ("CANCELLED", "UPLOADING_IMAGE", 5)),
    ],
)
def test_position(info: RunInfo, expected: tuple[str, str, int]) -> None:
    p = position_of(info)
    assert (p.status, p.current_step, p.progress) == expected


# Every Dagster run status (and one Dagster may add later) -> (status, currentStep, progress), on a
# full-pipeline run whose first step finished (second one running, or failed for FAILURE), so the
# current step shows whether it came from the steps or from the run status.
MIDWAY = {"prepare_canvas": "SUCCESS", "segment_jewelry": "IN_PROGRESS"}
UNKNOWN = "SOME_FUTURE_STATUS"
EVERY_RUN_STATUS: dict[str, tuple[dict[str, str], tuple[str, str, int]]] = {
    # Not started yet: no step stats, so the first step.
    "QUEUED": ({}, ("RUNNING", "UPLOADING_IMAGE", 5)),
    "NOT_STARTED": ({}, ("RUNNING", "UPLOADING_IMAGE", 5)),
    "STARTING": ({}, ("RUNNING", "UPLOADING_IMAGE", 5)),
    "STARTED": (MIDWAY, ("RUNNING", "REMOVING_BACKGROUND", 30)),
    "MANAGED": (MIDWAY, ("RUNNING", "REMOVING_BACKGROUND", 30)),
    "SUSPENDED": (MIDWAY, ("RUNNING", "REMOVING_BACKGROUND", 30)),
    # Done: COMPLETED and 100 whatever the steps say.
    "SUCCESS": (MIDWAY, ("COMPLETED", "COMPLETED", 100)),
    "FAILURE": ({**MIDWAY, "segment_jewelry": "FAILURE"}, ("FAILED", "REMOVING_BACKGROUND", 30)),
    # A cancel in progress already reads CANCELLED: the person asked for it and it will not resume.
    "CANCELING": (MIDWAY, ("CANCELLED", "REMOVING_BACKGROUND", 30)),
    "CANCELED": (MIDWAY, ("CANCELLED", "REMOVING_BACKGROUND", 30)),
    # A status this gateway does not know yet: still running, rather than a false end.
    UNKNOWN: (MIDWAY, ("RUNNING", "REMOVING_BACKGROUND", 30)),
}


@pytest.mark.parametrize("run_status", list(EVERY_RUN_STATUS))
def test_every_run_status_maps_onto_the_seed(run_status: str) -> None:
    steps, expected = EVERY_RUN_STATUS[run_status]
    p = position_of(run(FULL_JOB, run_status, **steps))
    assert (p.status, p.current_step, p.progress) == expected
    assert workflow_status(run_status) == expected[0]
    assert p.failed_op == ("segment_jewelry" if run_status == "FAILURE" else None)


def test_the_status_table_covers_every_dagster_run_status() -> None:
    # A status a new Dagster adds must get a deliberate mapping (and a row above), not the fallback.
    assert set(EVERY_RUN_STATUS) - {UNKNOWN} == {s.value for s in dg.DagsterRunStatus}
    assert UNKNOWN not in {s.value for s in dg.DagsterRunStatus}


def test_failed_step_is_reported() -> None:
    p = position_of(run(FULL_JOB, "FAILURE", prepare_canvas="SUCCESS", segment_jewelry="FAILURE"))
    assert p.failed_op == "segment_jewelry"


def test_readable_error_drops_the_exception_class() -> None:
    assert readable_error("dagster._core.definitions.events.Failure: the mask is empty\n  stack") == "the mask is empty"
    assert readable_error("the mask is empty: add jewelry") == "the mask is empty: add jewelry"


def test_a_failed_run_that_dagster_will_retry_is_still_running() -> None:
    failed = RunInfo("r", FULL_JOB, "FAILURE", [StepStat("prepare_canvas", "FAILURE", 0.0)])
    assert position_of(failed).status == "FAILED"
    retried = RunInfo("r", FULL_JOB, "FAILURE", failed.steps, {"dagster/will_retry": "true"})
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
        return RunInfo("r", FULL_JOB, "FAILURE", [StepStat("prepare_canvas", "FAILURE", 0.0)], tags, ended)

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
    runs._http = httpx.Client(
        transport=httpx.MockTransport(lambda _: httpx.Response(200, json={"data": {"addDynamicPartition": answer}}))
    )
    with pytest.raises(error) as raised:
        runs.add_partition("jewelry-gen-x")
    assert type(raised.value) is error
