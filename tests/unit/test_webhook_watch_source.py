"""With STATUS_SOURCE=storage (`make run`, docker-compose) the webhook watcher lists the runs that
owe webhooks from Dagster's run storage, as GET reads status: a finished run's webhook is queued
while the webserver is down, and watching asks the webserver nothing. Over GraphQL the watcher's
two queries a tick cost the webserver ~2.5 % of a core per gateway replica at the 1 s poll (5 % at
the tests' 0.5 s), idle or not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.storage_reader import StorageRunReader
from gateway.results import ResultReader
from gateway.webhook_outbox import outbox
from gateway.webhook_outbox.watcher import WebhookDispatcher
from jewel_dagster.contract import PARTITION_TAG, WEBHOOK_LIVE_TAG, WEBHOOK_TAG, WEBHOOK_URL_TAG
from jewel_dagster.resources.blob_store import LocalBlobStore
from tests.support.e2e_stack import free_port
from tests.support.instances import home_instance
from tests.support.outbox import outbox_settings

ENDINGS = ("SUCCESS", "FAILURE", "CANCELED")


@dg.op
def nothing() -> None:
    """The job's only op: the runs here are rows with tags and a status, never executed."""


JOB = dg.GraphDefinition("jewelry_generation", node_defs=[nothing]).to_job()


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    with home_instance(tmp_path, monkeypatch) as found:
        yield found


def _run(instance: dg.DagsterInstance, workflow_id: str, status: str, **tags: str) -> str:
    """A run of the request in `status`, with a webhook URL and the given tags. FAILURE and
    CANCELED are reported as Dagster reports a run's end (its update time to the microsecond; a
    row's first update time in SQLite has whole seconds)."""
    all_tags = {PARTITION_TAG: workflow_id, WEBHOOK_URL_TAG: "http://127.0.0.1:9/hook", **tags}
    ended = {"FAILURE": instance.report_run_failed, "CANCELED": instance.report_run_canceled}
    run = instance.create_run_for_job(
        JOB, status=dg.DagsterRunStatus.STARTED if status in ended else status, tags=all_tags
    )
    if status in ended:
        ended[status](run)
    return run.run_id


def test_the_storage_lists_what_the_watcher_asks_for(instance: dg.DagsterInstance) -> None:
    """Tag, statuses and update-time bounds filter as GraphQL's `runsOrError` does; newest first."""
    before_all = time.time() - 1
    first = _run(instance, "jewelry-gen-a", "FAILURE", **{WEBHOOK_TAG: "1"})
    time.sleep(0.05)
    between = time.time()
    time.sleep(0.05)
    second = _run(instance, "jewelry-gen-b", "CANCELED", **{WEBHOOK_TAG: "1"})
    _run(instance, "jewelry-gen-c", "CANCELED")  # no webhook owed
    _run(instance, "jewelry-gen-d", "STARTED", **{WEBHOOK_TAG: "1"})  # not ended
    live = _run(instance, "jewelry-gen-e", "STARTED", **{WEBHOOK_TAG: "1", WEBHOOK_LIVE_TAG: "1"})
    reader = StorageRunReader()
    try:
        ended = reader.runs_listed({WEBHOOK_TAG: "1"}, ENDINGS, before_all)
        assert [r.run_id for r in ended] == [second, first]
        assert [r.status for r in ended] == ["CANCELED", "FAILURE"]
        assert ended[0].tags[PARTITION_TAG] == "jewelry-gen-b" and ended[0].job_name == "jewelry_generation"
        assert all(r.update_time is not None and r.update_time > before_all for r in ended)
        assert reader.runs_listed({WEBHOOK_TAG: "1"}, ENDINGS, time.time() + 60) == []
        assert [r.run_id for r in reader.runs_listed({WEBHOOK_TAG: "1"}, ENDINGS, between)] == [second]
        older = reader.runs_listed({WEBHOOK_TAG: "1"}, ENDINGS, before_all, updated_before=between)
        assert [r.run_id for r in older] == [first]
        assert [r.run_id for r in reader.runs_listed({WEBHOOK_TAG: "1"}, ENDINGS, before_all, limit=1)] == [second]
        assert [r.run_id for r in reader.runs_listed({WEBHOOK_LIVE_TAG: "1"}, ("STARTING", "STARTED"))] == [live]
    finally:
        reader.close()


def test_a_finished_runs_webhook_is_queued_while_the_webserver_is_down(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished = _run(instance, "jewelry-gen-done", "SUCCESS", **{WEBHOOK_TAG: "1"})
    _run(instance, "jewelry-gen-live", "STARTED", **{WEBHOOK_TAG: "1", WEBHOOK_LIVE_TAG: "1"})
    # The webserver's port: nothing listens there.
    settings = outbox_settings(tmp_path / "blobs", status_source="storage", dagster_port=free_port())
    runs = DagsterRuns(settings)
    asked: list[str] = []

    def no_graphql(document: str, variables: dict[str, Any]) -> Any:
        asked.append(document)
        raise AssertionError("the watcher asked the webserver")

    monkeypatch.setattr(runs.transport, "query", no_graphql)
    store = LocalBlobStore(root=settings.local_blob_root)
    watcher = WebhookDispatcher(settings, runs, ResultReader(store), store)
    monkeypatch.setattr(watcher, "_final_state", lambda workflow_id, run: b'{"s":1}')
    try:
        watcher._tick()
        watcher._pool.shutdown(wait=True)  # the queuing is done by the pool
    finally:
        runs.close()
    assert asked == []
    (delivery,) = outbox.of_workflow(store, "jewelry-gen-done")
    assert delivery.id == finished and delivery.event == "completed" and delivery.status == "pending"
