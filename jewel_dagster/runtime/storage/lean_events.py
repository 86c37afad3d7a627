"""Dagster's events as stored, without the two copies of what each event already says (issue 28).

A step event's `logging_tags` (job, op, step key and run id, and "None" twice for a resource:
~200 bytes of JSON) repeat fields the event has on its own (`job_name`, `step_handle`,
`step_key`, the entry's `run_id`), and an entry's `user_message` repeats its event's `message`
(`EventLogEntry.message`, what the UI's run log shows, answers the event's `message` first).
Nothing reads either back from storage: not the UI (GraphQL builds a run's log from the event's own
fields and `EventLogEntry.message`), not re-execution (it reads step handles, outputs and
statuses), not the gateway. Dagster writes them into every stored event, and the event log on
PostgreSQL stores a row under ~2 KB uncompressed, so those copies were ~9 % of a request's event
column (55 events: 61.4 -> 55.5 KB of `pg_column_size`, 2026-12-05).

`lean_event` drops them from the entry that is stored; the event handed to the run's loggers and
subscribers is Dagster's own. The event log storages of dagster.yaml apply it
(runtime/instance_plugins/pool_claims.py), on SQLite and PostgreSQL alike; the copy of the last
materialization Dagster keeps in `asset_keys` is the stored entry, so it is lean too.

No private symbol: `EventLogEntry` and `DagsterEvent` are Dagster's public named tuples, rebuilt
with `_replace`. Canary: tests/unit/test_lean_event_envelope.py (the stored run's log reads as
Dagster's, message for message; no installed Dagster or GraphQL module reads `logging_tags` back).
"""

from __future__ import annotations

import dagster as dg


def lean_event(entry: dg.EventLogEntry) -> dg.EventLogEntry:
    """`entry` without its event's logging tags, and without `user_message` when it only repeats
    the event's `message`; a log line (no Dagster event) is unchanged."""
    event = entry.dagster_event
    if event is None:
        return entry
    if event.logging_tags:
        event = event._replace(logging_tags={})
    user_message = "" if event.message is not None and entry.user_message == event.message else entry.user_message
    if event is entry.dagster_event and user_message == entry.user_message:
        return entry
    return entry._replace(dagster_event=event, user_message=user_message)
