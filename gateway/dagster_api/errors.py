"""What can go wrong when the gateway asks Dagster.

DagsterError            Dagster answered, but not with what we asked for
└── DagsterUnavailable  Dagster did not answer (connection refused, timeout)
"""

from __future__ import annotations

import logging
import uuid


class DagsterError(Exception):
    pass


class DagsterUnavailable(DagsterError):
    pass


def readable_error(message: str) -> str:
    """Strip Dagster's exception class prefix: 'dagster...Failure: text' -> 'text'."""
    first_line = message.strip().splitlines()[0] if message.strip() else "the step failed"
    head, sep, rest = first_line.partition(": ")
    if sep and "." in head and " " not in head:
        return rest.strip()
    return first_line


def public_message(exc: DagsterError, log: logging.Logger) -> str:
    """What a caller is told of a Dagster error, the same on GET and the event stream: a generic
    sentence and an error id. Dagster's own text (addresses, database errors) goes to the log
    under that id, for the operator."""
    error_id = uuid.uuid4().hex[:12]
    log.error("error %s: %s: %s", error_id, type(exc).__name__, exc)
    if isinstance(exc, DagsterUnavailable):
        return f"The pipeline (Dagster) is unavailable; retry shortly (error id {error_id})."
    return f"The pipeline refused the request (error id {error_id})."
