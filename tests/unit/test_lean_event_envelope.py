"""Our event log storages store Dagster's events without their logging tags and without a
`user_message` that repeats the event's message (jewel_dagster/runtime/storage/lean_events.py,
issue 28), and a run's log still reads as Dagster's own, message for message."""

# No `from __future__ import annotations` here: Dagster reads the assets' annotations at run time.
import importlib.util
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster_graphql.schema import create_schema

from jewel_dagster.runtime.instance_plugins import pool_claims
from jewel_dagster.runtime.storage.lean_events import lean_event
from tests.support.infra import postgres_database


@dg.asset
def measured(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    context.log.info("a line of our own")  # a log line: no Dagster event, stored as it is
    return dg.MaterializeResult(metadata={"seconds": 0.1})


@dg.asset(deps=[measured], check_specs=[dg.AssetCheckSpec("kept", asset="reported")])
def reported() -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    yield dg.MaterializeResult(metadata={"path": "requests/r/run/reported.json"})
    yield dg.AssetCheckResult(check_name="kept", passed=True)


def _storage(kind: str, location: str) -> dict[str, Any]:
    if kind == "stock":
        return {}
    if kind == "sqlite":
        cls, config = pool_claims.QuickClaimSqliteEventLogStorage, {"base_dir": location}
    else:  # SQLAlchemy 2.1 maps a plain postgresql:// to psycopg 3; dagster-postgres ships psycopg2.
        url = location.replace("postgresql://", "postgresql+psycopg2://", 1)
        cls, config = pool_claims.QuickClaimPostgresEventLogStorage, {"postgres_url": url}
    return {"event_log_storage": {"module": pool_claims.__name__, "class": cls.__name__, "config": config}}


@contextmanager
def _instance(kind: str, tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    with postgres_database() if kind == "postgres" else _nothing() as url:
        (tmp_path / kind).mkdir()
        location = url or str(tmp_path / kind / "history")
        overrides = _storage(kind, location)
        with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path / kind)) as instance:
            yield instance


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def _stored_run(kind: str, tmp_path: Path) -> list[dg.EventLogEntry]:
    """The run's stored events, then Dagster's copy of the newest materialization (asset_keys)."""
    with _instance(kind, tmp_path) as instance:
        result = dg.materialize([measured, reported], instance=instance)
        assert result.success
        newest = instance.get_latest_materialization_event(dg.AssetKey("reported"))
        assert newest is not None
        return [*instance.all_logs(result.run_id), newest]


def _as_the_log_shows_it(entry: dg.EventLogEntry) -> tuple[Any, ...]:
    """What the UI's run log reads of an event (dagster_graphql's `construct_basic_params` and the
    event's own data), with the run id left out: each run has its own."""
    event = entry.dagster_event
    return (
        re.sub(r"\d+", "N", re.sub(r"\b[\d.]+m?s\b", "T", entry.message)),  # durations and pids vary
        entry.level,
        entry.step_key,
        event.event_type_value if event else None,
        str(event.node_handle) if event and event.node_handle else None,
        event.step_handle if event else None,
        type(event.event_specific_data).__name__ if event else None,
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_stored_events_drop_the_copies_and_read_as_dagsters_own(kind: str, tmp_path: Path) -> None:
    stock = _stored_run("stock", tmp_path)
    ours = _stored_run(kind, tmp_path)

    # The stock storage keeps both copies (the test sees what it means to cut).
    tagged = [e for e in stock if e.dagster_event and e.dagster_event.logging_tags]
    assert len(tagged) >= 8, len(tagged)  # every event a step sends: start, output, materialization...
    assert any(e.dagster_event and e.user_message == e.dagster_event.message for e in stock)

    # Ours: none, and the log reads the same, line for line.
    assert all(not e.dagster_event.logging_tags for e in ours if e.dagster_event)
    assert all(e.user_message == "" for e in ours if e.dagster_event and e.dagster_event.message is not None)
    assert [_as_the_log_shows_it(e) for e in ours] == [_as_the_log_shows_it(e) for e in stock]
    (line,) = [e for e in ours if e.dagster_event is None]
    assert line.user_message == "a line of our own"
    assert sum(map(len, map(dg.serialize_value, ours))) < 0.9 * sum(map(len, map(dg.serialize_value, stock)))


def test_a_lean_event_keeps_every_other_field() -> None:
    event = dg.DagsterEvent(
        event_type_value=dg.DagsterEventType.STEP_START.value,
        job_name="job",
        logging_tags={"job_name": "job", "step_key": "s", "run_id": "r"},
        message="Started execution of step",
        pid=7,
    )
    entry = dg.EventLogEntry(None, 10, "Started execution of step", "r", 1.0, "s", "job", event)
    lean = lean_event(entry)
    assert lean.dagster_event == event._replace(logging_tags={}) and lean.user_message == ""
    assert lean._replace(user_message=entry.user_message, dagster_event=event) == entry
    assert lean.message == entry.message == "Started execution of step"
    line = dg.EventLogEntry(None, 20, "ours", "r", 1.0)
    assert lean_event(line) is line
    # A user message that is not the event's message is kept.
    other = entry._replace(user_message="something else")
    assert lean_event(other).user_message == "something else"


def test_canary_nothing_dagster_serves_reads_logging_tags_back() -> None:
    """When this fails, a Dagster upgrade exposes or reads an event's logging tags: stop dropping
    them (lean_events.py). GraphQL (what the UI reads) has no field for them."""
    schema = str(create_schema().graphql_schema).lower()
    assert "loggingtags" not in schema and "logging_tags" not in schema


# Every read of `.logging_tags` or `.user_message` in the installed Dagster packages (1.13.27):
# the execution plan's own step tags (not an event's), and `EventLogEntry.message`'s fallback to
# `user_message` when the event has no message of its own.
_KNOWN_READS = {
    ("dagster", "_core/events/log.py", "user_message"),
    ("dagster", "_core/execution/resources_init.py", "logging_tags"),
    ("dagster", "_core/execution/context/system.py", "logging_tags"),
}
_PACKAGES = ["dagster", "dagster_graphql", "dagster_postgres", "dagster_webserver", "dagster_celery", "dagster_azure"]


def test_canary_no_dagster_module_reads_the_dropped_fields_of_a_stored_event() -> None:
    """When this fails, a Dagster upgrade reads `logging_tags` or `user_message` somewhere new:
    check that it is not an event read back from storage before keeping lean_events.py."""
    reads = set()
    for package in _PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin is not None, package
        root = Path(spec.origin).parent
        for path in root.rglob("*.py"):
            if "tests" in path.parts or path.name.startswith("test"):
                continue
            for name in re.findall(r"\.(logging_tags|user_message)\b", path.read_text(errors="ignore")):
                reads.add((package, path.relative_to(root).as_posix(), name))
    assert reads == _KNOWN_READS
