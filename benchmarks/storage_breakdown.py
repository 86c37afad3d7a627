"""Where a request's Dagster bytes go on PostgreSQL (issue 28): per table and per event type.

`pg_database_size` says how much a request costs, not what for. A snapshot here is, for every
table of the database, its total size (heap, TOAST and indexes, in pages: what the disk holds) and
rows, and for `event_logs` per `dagster_event_type` (NULL: a log message) the rows and the bytes
of the `event` column (as stored, compressed when TOASTed). The difference of two snapshots over
N requests, divided by N, is what one request writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa

_TABLES = """
SELECT c.relname, pg_total_relation_size(c.oid), pg_indexes_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname = 'public'
"""
_EVENTS = """
SELECT COALESCE(dagster_event_type, 'LOG (no event type)'), count(*), COALESCE(sum(pg_column_size(event)), 0),
       COALESCE(sum(octet_length(event)), 0)
FROM event_logs GROUP BY 1
"""


@dataclass(frozen=True)
class Snapshot:
    tables: Mapping[str, tuple[int, int, int]]  # name -> (total bytes, index bytes, rows)
    events: Mapping[str, tuple[int, int, int]]  # type -> (rows, stored bytes, text bytes)


def snapshot(engine: sa.Engine) -> Snapshot:
    """Sizes now, after a CHECKPOINT (no ANALYZE: its catalog rows would count as a request's)."""
    with engine.connect() as conn:
        conn.execute(sa.text("CHECKPOINT"))
        tables: dict[str, tuple[int, int, int]] = {}
        for name, total, indexes in conn.execute(sa.text(_TABLES)):
            rows = int(conn.execute(sa.text(f'SELECT count(*) FROM "{name}"')).scalar_one())
            tables[name] = (int(total), int(indexes), rows)
        events = {str(t): (int(n), int(s), int(b)) for t, n, s, b in conn.execute(sa.text(_EVENTS))}
        conn.commit()
    return Snapshot(tables, events)


def _delta(
    after: Mapping[str, tuple[int, ...]], before: Mapping[str, tuple[int, ...]], n: int
) -> dict[str, tuple[float, ...]]:
    out = {}
    for key, values in after.items():
        old = before.get(key, (0,) * len(values))
        diff = tuple((a - b) / n for a, b in zip(values, old, strict=True))
        if any(diff):
            out[key] = diff
    return out


def report(before: Snapshot, after: Snapshot, requests: int) -> str:
    """The per-request growth, largest first: tables, then `event_logs` by event type."""
    lines = [f"Per request (mean of {requests}):", f"  {'table':<34}{'KB total':>10}{'KB index':>10}{'rows':>8}"]
    tables = _delta(after.tables, before.tables, requests)
    for name, (total, indexes, rows) in sorted(tables.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"  {name:<34}{total / 1024:>10.1f}{indexes / 1024:>10.1f}{rows:>8.1f}")
    lines.append(f"  {'event_logs by dagster_event_type':<34}{'rows':>10}{'KB event':>10}{'KB text':>10}")
    events = _delta(after.events, before.events, requests)
    for kind, (rows, stored, text) in sorted(events.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"  {kind:<34}{rows:>10.1f}{stored / 1024:>10.1f}{text / 1024:>10.1f}")
    rows, stored, text = (sum(v[i] for v in events.values()) for i in range(3))
    lines.append(f"  {'all events':<34}{rows:>10.1f}{stored / 1024:>10.1f}{text / 1024:>10.1f}")
    return "\n".join(lines)
