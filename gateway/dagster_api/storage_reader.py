"""Run status read straight from Dagster's run and event storage (STATUS_SOURCE=storage).

A GraphQL status query costs the webserver ~20-100 ms of CPU and queues behind launches and
the UI; the same rows read from the storage (SQLite or PostgreSQL, through Dagster's own
DagsterInstance API) take a few milliseconds and load nothing but the database. What a finished
request's answer names (blob paths, backends, the `fidelity` check verdict, a failure's message) is
read the same way, so a finished request is answered while the webserver is down. Launches, terminations and
everything that changes state still go through GraphQL.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from gateway.dagster_api.errors import DagsterUnavailable, readable_error
from gateway.dagster_api.models import RunInfo
from gateway.dagster_api.run_events import EVENT_TYPES, RunEvent, RunEventLog
from jewel_dagster.contract import CHECK_NAME, AssetName

POOL_OVERFLOW = 8  # connections beyond the one kept, for reads at once (closed when returned)


class StorageRunReader:
    """`RunReader` over the instance under DAGSTER_HOME: newest/oldest run of a tag set with its
    steps and assets, and the text metadata of materializations."""

    def __init__(self, statement_timeout_ms: int = 30_000) -> None:
        from dagster import DagsterInstance  # deferred: only this source needs Dagster's storage

        self._instance = DagsterInstance.get()
        # A long-lived server, as the webserver is: keep connections open (Dagster's PostgreSQL
        # storages otherwise connect once a call, ~10 ms each: benchmarks.scale's GET of a finished
        # request made ~11 reads, half its time spent connecting). SQLite storages ignore it.
        self._instance.optimize_for_webserver(
            statement_timeout=statement_timeout_ms, pool_recycle=3600, max_overflow=POOL_OVERFLOW
        )
        # SQLite (the embedded default) makes an engine a call: pooled, as the above does for PostgreSQL.
        from jewel_dagster.runtime.storage.storage_engines import pool_sqlite_run_storage

        pool_sqlite_run_storage(self._instance)
        self.events = RunEventLog(self.events_after)  # each run's asset and step events, read once

    @property
    def instance(self) -> Any:
        """The DagsterInstance it reads, with its pooled connections: shared with the queue
        estimates' refresher (gateway.dagster_api.queue_estimates), which closes nothing."""
        return self._instance

    def runs_tagged(self, tags: dict[str, str], newest: bool = True, with_steps: bool = True) -> RunInfo | None:
        from dagster import RunsFilter

        try:
            records = self._instance.get_run_records(filters=RunsFilter(tags=tags), limit=1, ascending=not newest)
            if not records:
                return None
            run, end_time = records[0].dagster_run, records[0].end_time
        except Exception as exc:  # the database is down or locked: as if Dagster did not answer
            raise DagsterUnavailable(f"Dagster's run storage did not answer: {type(exc).__name__}: {exc}") from exc
        # One read of the run's new asset and step events (none at all once they were all seen).
        assets, steps = self.events.read(run.run_id) if with_steps else (None, [])
        return RunInfo(run.run_id, run.job_name, run.status.name, steps, dict(run.tags), end_time, assets)

    def events_after(self, run_id: str, cursor: str | None) -> tuple[list[RunEvent], str | None]:
        """The run's planned and materialized assets and its step events after `cursor`."""
        from dagster import DagsterEventType

        try:
            found = self._instance.get_records_for_run(
                run_id, cursor=cursor, of_type={DagsterEventType(kind) for kind in EVENT_TYPES}
            )
        except Exception as exc:  # the database is down or locked: as if Dagster did not answer
            raise DagsterUnavailable(f"Dagster's event storage did not answer: {type(exc).__name__}: {exc}") from exc
        events = []
        for record in found.records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if event is None:
                continue
            asset = event.asset_key.to_user_string() if event.asset_key is not None else None
            events.append(RunEvent(event.event_type_value, event.step_key, asset, entry.timestamp))
        return events, found.cursor

    def runs_listed(
        self,
        tags: dict[str, str],
        statuses: Sequence[str],
        updated_after: float | None = None,
        updated_before: float | None = None,
        limit: int = 100,
    ) -> list[RunInfo]:
        """The run records GraphQL's `runsOrError` would list for the same filter (it asks the
        same storage call), read here without the webserver."""
        from dagster import DagsterRunStatus, RunsFilter

        filters = RunsFilter(
            tags=tags,
            statuses=[DagsterRunStatus(status) for status in statuses],
            updated_after=_utc(updated_after),
            updated_before=_utc(updated_before),
        )
        try:
            records = self._instance.get_run_records(filters=filters, limit=limit)
        except Exception as exc:  # the database is down or locked: as if Dagster did not answer
            raise DagsterUnavailable(f"Dagster's run storage did not answer: {type(exc).__name__}: {exc}") from exc
        return [
            RunInfo(
                record.dagster_run.run_id,
                record.dagster_run.job_name,
                record.dagster_run.status.name,
                tags=dict(record.dagster_run.tags),
                end_time=record.end_time,
                update_time=record.update_timestamp.timestamp(),
            )
            for record in records
        ]

    def newest_run_id(self, tags: dict[str, str]) -> str | None:
        """Only the id of the newest run with these tags: one indexed read, no run body, no steps."""
        from dagster import RunsFilter

        try:
            ids = self._instance.get_run_ids(filters=RunsFilter(tags=tags), limit=1)
        except Exception as exc:  # the database is down or locked: as if Dagster did not answer
            raise DagsterUnavailable(f"Dagster's run storage did not answer: {type(exc).__name__}: {exc}") from exc
        return ids[0] if ids else None

    def queued_run_ids(self) -> frozenset[str]:
        """The ids of every run in Dagster's run queue (QUEUED): one indexed read, no run bodies
        (what tells the status cache a queued request is still queued, `StatusCache`)."""
        from dagster import DagsterRunStatus, RunsFilter

        try:
            return frozenset(self._instance.get_run_ids(filters=RunsFilter(statuses=[DagsterRunStatus.QUEUED])))
        except Exception as exc:  # the database is down or locked: as if Dagster did not answer
            raise DagsterUnavailable(f"Dagster's run storage did not answer: {type(exc).__name__}: {exc}") from exc

    def newest_texts(self, request_id: str, asset: str) -> dict[str, str]:
        """The text metadata (label -> text) of the request's newest materialization of `asset`,
        empty when it has none: one indexed read, where GraphQL costs the webserver a query."""
        from dagster import AssetKey, AssetRecordsFilter, TextMetadataValue

        try:
            found = self._instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[request_id]), limit=1
            )
        except Exception as exc:  # the database is down or locked: as if Dagster did not answer
            raise DagsterUnavailable(f"Dagster's event storage did not answer: {type(exc).__name__}: {exc}") from exc
        for record in found.records:
            materialization = record.asset_materialization
            if materialization is not None:
                metadata = materialization.metadata.items()
                return {label: str(value.text) for label, value in metadata if isinstance(value, TextMetadataValue)}
        return {}

    def newest_texts_of(self, request_id: str, assets: Sequence[str]) -> dict[str, dict[str, str]]:
        """`newest_texts` of each asset: one indexed read each (the SQLite event log opens a
        connection a read, which is why a finished run's result is read once, `StatusCache`)."""
        return {name: self.newest_texts(request_id, name) for name in dict.fromkeys(assets)}

    def failure_of(self, run_id: str) -> tuple[str | None, str]:
        """What GraphQLRunReader.failure_of answers, from the run's failure events in the event log."""
        from dagster import DagsterEventType

        failures = {DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
        try:
            records = self._instance.get_records_for_run(run_id, of_type=failures).records
        except Exception as exc:  # the database is down or locked: as if Dagster did not answer
            raise DagsterUnavailable(f"Dagster's event storage did not answer: {type(exc).__name__}: {exc}") from exc
        entries = [record.event_log_entry for record in records]
        for entry in entries:
            event = entry.dagster_event
            if event is not None and event.event_type == DagsterEventType.STEP_FAILURE:
                error = event.step_failure_data.error
                message = readable_error(error.message if error else "")
                if error is not None and error.cause is not None:  # e.g. "Exceeded max_retries of 3"
                    message = f"{readable_error(error.cause.message)} ({message})"
                return event.step_key, message
        for entry in entries:
            event = entry.dagster_event
            if event is not None and event.event_type == DagsterEventType.RUN_FAILURE:
                return None, entry.message
        return None, "the run failed"

    def fidelity_check(self, request_id: str) -> dict[str, Any] | None:
        """The newest `fidelity` result of the request, the dict GraphQLRunReader.fidelity_check
        answers: read from the check-execution index, as the webserver itself reads it."""
        from dagster import AssetCheckKey, AssetKey

        from jewel_dagster.runtime.storage.check_history import newest_check_execution

        check = AssetCheckKey(AssetKey(str(AssetName.FLUX_METRICS)), CHECK_NAME)
        try:
            newest = newest_check_execution(self._instance, check, request_id)
        except Exception as exc:  # the database is down or locked: as if Dagster did not answer
            raise DagsterUnavailable(f"Dagster's event storage did not answer: {type(exc).__name__}: {exc}") from exc
        if newest is None:
            return None
        return {
            "passed": newest.passed,
            "status": newest.status,
            "violations": newest.texts.get("violations"),
            "runId": newest.run_id,
            **({"reason": newest.texts["reason"]} if newest.texts.get("reason") else {}),
        }

    def close(self) -> None:
        from jewel_dagster.runtime.storage.storage_engines import dispose_storage_engines

        # dispose() leaves the pooled PostgreSQL connections open (jewel_dagster.runtime.storage.storage_engines).
        dispose_storage_engines(self._instance)
        self._instance.dispose()


def _utc(timestamp: float | None) -> datetime.datetime | None:
    """A bound in unix seconds as Dagster's filters take it (GraphQL's `updatedAfter` makes the
    same aware datetime; 0 or None: no bound, as there)."""
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC) if timestamp else None
