"""A run's end reaches the gateway's status cache at once (jewel_dagster/run_end_notices.py): the
process that stores the end tells every listener of the instance, and the gateway forgets the
kept running state, so the next poll reads the end instead of waiting for the state to expire."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.models import RunInfo
from gateway.settings import GatewaySettings
from jewel_dagster import run_end_notices
from jewel_dagster.run_end_notices import RunEndListener
from tests.support.e2e_stack import free_port

RID = "jewelry-gen-00000000-0000-0000-0000-0000000000e1"
DEADLINE_SECONDS = 5.0


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class _Heard:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.event = threading.Event()

    def __call__(self, run_id: str) -> None:
        self.ids.append(run_id)
        self.event.set()


def test_every_listener_of_the_instance_hears_a_run_end_and_no_other(tmp_path: Path) -> None:
    home, other_home = tmp_path / "home", tmp_path / "other"
    heard = [_Heard(), _Heard(), _Heard()]
    listening = [RunEndListener(str(home), heard[0]), RunEndListener(str(home), heard[1])]
    listening.append(RunEndListener(str(other_home), heard[2]))
    try:
        assert run_end_notices.notify(str(home), "run-1") == 2
        _wait_for(lambda: heard[0].ids == ["run-1"] and heard[1].ids == ["run-1"])
        assert not heard[2].event.wait(0.2)
    finally:
        for listener in listening:
            listener.close()
    assert run_end_notices.notify(str(home), "run-2") == 0  # closed: gone from /proc/net/unix


def test_a_run_end_stored_through_our_event_log_is_told(tmp_path: Path) -> None:
    overrides = {
        "event_log_storage": {
            "module": "jewel_dagster.runtime.instance_plugins.pool_claims",
            "class": "QuickClaimSqliteEventLogStorage",
            "config": {"base_dir": str(tmp_path / "runs")},
        }
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        heard = _Heard()
        listener = RunEndListener(instance.root_directory, heard)
        try:
            run = instance.add_run(dg.DagsterRun(job_name="ends", status=dg.DagsterRunStatus.STARTED))
            instance.report_engine_event("still running", run)
            assert not heard.event.wait(0.2)  # other events tell nothing
            instance.report_run_failed(run)
            assert heard.event.wait(DEADLINE_SECONDS)
            assert heard.ids == [run.run_id]
        finally:
            listener.close()


def test_the_gateway_answers_a_told_end_at_the_next_poll(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached running state would be answered for STATUS_CACHE_SECONDS (the clock does not
    move here): only the notice explains the end at the next poll."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    settings = GatewaySettings(dagster_port=free_port(), status_source="storage", status_cache_seconds=0.25)
    dagster = DagsterRuns(settings)
    history = [RunInfo("run-1", "jewelry_generation", "STARTED")]
    dagster.latest_run = lambda request_id: history[-1]  # type: ignore[method-assign]
    dagster.status.clock = lambda: 1000.0

    def status() -> str | None:
        run = dagster.latest_run_cached(RID)
        return run.status if run else None

    try:
        assert status() == "STARTED"
        history.append(RunInfo("run-1", "jewelry_generation", "SUCCESS"))  # the run ends
        assert status() == "STARTED"  # kept: not expired
        assert run_end_notices.notify(str(tmp_path), "run-other") == 1
        time.sleep(0.1)
        assert status() == "STARTED"  # another run's end changes nothing
        run_end_notices.notify(str(tmp_path), "run-1")
        _wait_for(lambda: status() == "SUCCESS")
    finally:
        dagster.close()


def test_a_notice_ahead_of_the_run_status_is_read_until_the_end_shows() -> None:
    """Dagster stores the end event (and the notice leaves) before it writes the run's status: a
    read right after the notice may still say STARTED. That state is not kept: the next poll reads
    again (the clock held still, the kept state would otherwise be answered for the TTL)."""
    settings = GatewaySettings(dagster_port=free_port(), status_cache_seconds=0.25)
    dagster = DagsterRuns(settings)
    reads = [RunInfo("run-1", "jewelry_generation", "STARTED")] * 2 + [
        RunInfo("run-1", "jewelry_generation", "SUCCESS")
    ]
    answered: list[RunInfo] = []

    def latest_run(request_id: str) -> RunInfo:
        answered.append(reads[min(len(answered), len(reads) - 1)])
        return answered[-1]

    dagster.latest_run = latest_run  # type: ignore[method-assign]
    dagster.status.clock = lambda: 1000.0
    try:
        assert dagster.status.latest(RID).status == "STARTED"  # type: ignore[union-attr]
        assert dagster.status.run_ended("run-1") == 1
        assert dagster.status.latest(RID).status == "STARTED"  # type: ignore[union-attr]  # the status lags
        assert dagster.status.latest(RID).status == "SUCCESS"  # type: ignore[union-attr]  # read again
        assert len(answered) == 3
    finally:
        dagster.close()
