"""JSON log lines that carry the request's correlation id, workflow id and run id.

The ids live in a context variable that the middleware sets for each HTTP call
(`gateway.observability.middleware`); a handler running in FastAPI's thread pool sees a copy
of the context, so it `bind`s ids into the same dict rather than replacing the variable: the
middleware's line at the end of the call then names the workflow the handler launched.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from contextvars import ContextVar
from typing import Any

from jewel_dagster.log_format import json_line

# A client's X-Request-ID is kept when it is a plain token; anything else gets a fresh id,
# so a header cannot inject text into log lines or run tags.
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
_context: ContextVar[dict[str, str] | None] = ContextVar("jewel_request_context", default=None)
_HANDLER_NAME = "jewel-json"


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-ID when it is a plain token of at most 128 characters, else a new one."""
    if header is not None and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def start_request(request_id: str) -> dict[str, str]:
    """A fresh context for one HTTP call; returns the dict that `bind` fills."""
    context = {"requestId": request_id}
    _context.set(context)
    return context


def bind(**fields: str | None) -> None:
    """Add ids (workflowId, runId, ...) to the current call's context and its later log lines."""
    context = _context.get()
    if context is not None:
        context.update({k: v for k, v in fields.items() if v})


def current() -> dict[str, str]:
    """The current call's ids ({} outside a call)."""
    return dict(_context.get() or {})


def current_request_id() -> str | None:
    return (_context.get() or {}).get("requestId")


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the ids of the call the record was logged in."""

    def format(self, record: logging.LogRecord) -> str:
        return json_line(record, current())


class _TextWithIds(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{k}={v}" for k, v in current().items())
        text = super().format(record)
        return f"{text} [{ids}]" if ids else text


def configure_logging(log_format: str, level: str) -> None:
    """Give the `gateway` logger one stderr handler in the chosen format (idempotent: apps built
    again in one process, as tests do, replace it rather than add another)."""
    logger = logging.getLogger("gateway")
    logger.setLevel(level)
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    formatter: logging.Formatter = (
        JsonFormatter() if log_format == "json" else _TextWithIds("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.setFormatter(formatter)
    logger.addHandler(handler)


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call that adds its own fields to the JSON line."""
    return {"fields": values}
