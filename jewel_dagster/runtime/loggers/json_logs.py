"""The run workers' log lines as JSON, with the request's ids: Dagster's `json` logger.

Dagster's console logger prints `job - run id - step - EVENT - message` text. A log shipper
wants fields: this logger writes one JSON object a line (`jewel_dagster.log_format`) with
`runId`, `workflowId` (the run's partition), `step`, `event` (STEP_START, ASSET_MATERIALIZATION,
...) and `requestId` (the `jewel/request-id` run tag the gateway set from the call's
X-Request-ID), so one grep on a request id finds the gateway's lines and the run's.

Registered as `json` in the Definitions; a run uses it when its run config names it
(`jewel_dagster.contract.json_logging_run_config`), which every launch of ours does with
LOG_FORMAT=json; a run without it logs Dagster's console text.

Dagster hands a logger each record with its run context in a private attribute; no public
call reads it.

Private symbols used (checked against dagster 1.13.27):
- `dagster._core.log_manager.LOG_RECORD_METADATA_ATTR` (the record attribute, a
  `DagsterLogRecordMetadata` dict: run_id, job_name, job_tags, step_key, dagster_event,
  orig_message)
Canary: tests/unit/test_json_logs.py (a run's lines carry its run id, partition, step and tag).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import dagster as dg
from dagster._core.log_manager import LOG_RECORD_METADATA_ATTR

from jewel_dagster.contract import PARTITION_TAG, REQUEST_ID_TAG
from jewel_dagster.log_format import json_line


class DagsterJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        meta: dict[str, Any] = getattr(record, LOG_RECORD_METADATA_ATTR, None) or {}
        tags = meta.get("job_tags") or {}
        event = meta.get("dagster_event")
        context = {
            "runId": meta.get("run_id"),
            "workflowId": tags.get(PARTITION_TAG),
            "requestId": tags.get(REQUEST_ID_TAG),
            "job": meta.get("job_name"),
            "step": meta.get("step_key"),
            "event": getattr(getattr(event, "event_type", None), "name", None),  # RUN_START, not PIPELINE_START
        }
        # A failure event (STEP_FAILURE, RUN_FAILURE) carries its exception as data, not as the
        # record's exc_info: without it the line says only "An exception was thrown".
        error = getattr(getattr(event, "event_specific_data", None), "error", None)
        if error is not None:
            context["error"] = error.to_string() if hasattr(error, "to_string") else str(error)
        if meta.get("orig_message") is not None:
            record = logging.makeLogRecord({**record.__dict__, "msg": meta["orig_message"], "args": None})
        return json_line(record, context)


@dg.logger(
    config_schema={"log_level": dg.Field(str, is_required=False, default_value="DEBUG")},
    description="JSON lines on stderr with runId, workflowId, step, event and requestId.",
)
def json_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    # DEBUG by default, like Dagster's console logger: its step events (start, output,
    # materialization, success) are DEBUG records, and they are what an operator follows.
    logger = logging.Logger("jewel_dagster.run", level=init_context.logger_config["log_level"])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(DagsterJsonFormatter())
    logger.addHandler(handler)
    return logger
