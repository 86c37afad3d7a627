"""The status cache (stale-while-revalidate) answers a poller with a state newer than its last poll."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.models import RunInfo
from gateway.settings import GatewaySettings
from tests.support.e2e_stack import free_port

RID = "jewelry-gen-00000000-0000-0000-0000-0000000000c1"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runs() -> Iterator[tuple[DagsterRuns, _Clock, list[RunInfo]]]:
    """DagsterRuns whose newest run is the last of a list the test appends to, on a hand-moved clock."""
    settings = GatewaySettings(dagster_port=free_port(), status_cache_seconds=0.25, status_stale_seconds=5.0)
    assert settings.frontend_poll_seconds == 2.0  # the reference frontend's interval
    dagster = DagsterRuns(settings)
    clock, history = _Clock(), [RunInfo("run-1", "jewelry_generation", "STARTED")]
    dagster._clock = clock
    dagster.latest_run = lambda request_id: history[-1]  # type: ignore[method-assign]
    try:
        yield dagster, clock, history
    finally:
        dagster.close()


def test_a_run_that_ended_since_the_previous_poll_is_answered_at_once(
    runs: tuple[DagsterRuns, _Clock, list[RunInfo]],
) -> None:
    dagster, clock, history = runs
    assert dagster.latest_run_cached(RID).status == "STARTED"  # a poll
    history.append(RunInfo("run-1", "jewelry_generation", "SUCCESS"))  # the run ends
    clock.now += 1.5  # the next poll: past half the poll interval, within status_stale_seconds
    assert dagster.latest_run_cached(RID).status == "SUCCESS"  # not the state of the previous poll


def test_young_states_are_answered_from_the_cache_final_ones_never(
    runs: tuple[DagsterRuns, _Clock, list[RunInfo]],
) -> None:
    dagster, clock, history = runs
    assert dagster.latest_run_cached(RID).status == "STARTED"
    history.append(RunInfo("run-1", "jewelry_generation", "SUCCESS"))
    clock.now += 0.5  # expired, but younger than half a poll: a crowd of pollers gets it at once
    assert dagster.latest_run_cached(RID).status == "STARTED"
    dagster.forget(RID)
    assert dagster.latest_run_cached(RID).status == "SUCCESS"
    # A final state is not kept: another gateway replica may launch a newer run of the request
    # (a generate, a rerun from the UI) at any moment, and this replica would never hear of it.
    history.append(RunInfo("run-2", "jewelry_regenerate", "STARTED"))
    assert dagster.latest_run_cached(RID).status == "STARTED"
