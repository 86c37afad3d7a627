"""The run workers' JSON logger (canary of jewel_dagster/runtime/loggers/json_logs.py): each line of a run
names its run id, workflow (partition), step, event and the request id the gateway tagged."""

# No `from __future__ import annotations` here: Dagster reads the asset's annotations at run time.
import json

import dagster as dg
import pytest

from jewel_dagster.contract import JSON_LOGGER, PARTITION_TAG, REQUEST_ID_TAG, json_logging_run_config
from jewel_dagster.runtime.loggers.json_logs import json_logger


@dg.asset
def measured(context: dg.AssetExecutionContext) -> int:
    context.log.info("measuring")
    return 1


@dg.asset
def broken() -> int:
    raise ValueError("the photo is upside down")


def test_a_runs_lines_carry_its_ids(capsys: pytest.CaptureFixture[str]) -> None:
    job = dg.define_asset_job("logged", selection=[measured], executor_def=dg.in_process_executor)
    defs = dg.Definitions(assets=[measured], jobs=[job], loggers={JSON_LOGGER: json_logger})
    tags = {PARTITION_TAG: "jewelry-gen-1", REQUEST_ID_TAG: "req-7"}
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("logged").execute_in_process(
            instance=instance, tags=tags, run_config=json_logging_run_config()
        )
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert lines, "no JSON lines on stderr"
    assert all(line["runId"] == result.run_id and line["requestId"] == "req-7" for line in lines)
    assert all(line["workflowId"] == "jewelry-gen-1" and line["job"] == "logged" for line in lines)
    events = {(line.get("step"), line.get("event")) for line in lines}
    assert {("measured", "STEP_START"), ("measured", "STEP_SUCCESS"), (None, "RUN_START")} <= events
    mine = next(line for line in lines if line["message"] == "measuring")
    assert mine["step"] == "measured" and mine["level"] == "INFO" and "event" not in mine
    assert not [line for line in lines if "error" in line], "an error field on a run that failed nowhere"


def test_a_failure_line_carries_the_exception(capsys: pytest.CaptureFixture[str]) -> None:
    job = dg.define_asset_job("failing", selection=[broken], executor_def=dg.in_process_executor)
    defs = dg.Definitions(assets=[broken], jobs=[job], loggers={JSON_LOGGER: json_logger})
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("failing").execute_in_process(
            instance=instance, run_config=json_logging_run_config(), raise_on_error=False
        )
    assert not result.success
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    failed = next(line for line in lines if line.get("event") == "STEP_FAILURE")
    assert "ValueError: the photo is upside down" in failed["error"]
    started = next(line for line in lines if line.get("event") == "STEP_START")  # the same step, before it
    assert started["step"] == "broken" and "error" not in started, started
