"""One JSON object a line: the log format the gateway and the run workers share.

A log shipper (Loki, Elasticsearch, CloudWatch) indexes the fields, so one query on
`requestId` or `workflowId` follows a request through the gateway, Dagster and the model calls.
Field names are the API's (camelCase); free of Dagster and FastAPI so both sides use it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# What a caller may pass as `extra={"fields": {...}}` to add to its line.
FIELDS_ATTR = "fields"


def json_line(record: logging.LogRecord, context: Mapping[str, Any]) -> str:
    """The record as one JSON line: time, level, logger, message, then the context's non-empty
    fields, the record's own `fields`, and the traceback when there is one."""
    line: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname,
        "logger": record.name,
        "message": record.getMessage(),
    }
    line.update({k: v for k, v in context.items() if v not in (None, "")})
    extra = getattr(record, FIELDS_ATTR, None)
    if isinstance(extra, Mapping):
        line.update({k: v for k, v in extra.items() if v not in (None, "")})
    if record.exc_info and record.exc_info[0] is not None:
        line["error"] = logging.Formatter().formatException(record.exc_info)
    return json.dumps(line, default=str, ensure_ascii=False)
