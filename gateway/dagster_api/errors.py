"""What can go wrong when the gateway asks Dagster.

DagsterError            Dagster answered, but not with what we asked for
└── DagsterUnavailable  Dagster did not answer (connection refused, timeout)
"""

from __future__ import annotations


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
