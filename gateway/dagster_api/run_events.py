"""Each run's asset and step events, kept per run id: a refresh reads only the events after the
last one it saw.

Progress follows what a run plans to materialize (ASSET_MATERIALIZATION_PLANNED, written when the
run is created) and what it materialized (ASSET_MATERIALIZATION, written as each output is
handled), so a subset run or a re-execution is placed at the seed steps it performs, whatever the
Dagster step layout. Reading those events again at every refresh would deserialize every
materialization (with its preview) each time; a run's events only grow, so each source (the
storage, GraphQL) hands over the events after a cursor, and this folds them into what it has.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gateway.dagster_api.models import RunAssets, StepStat

PLANNED = "ASSET_MATERIALIZATION_PLANNED"
MATERIALIZATION = "ASSET_MATERIALIZATION"
# Step events -> the status Dagster's step stats would show (a retry runs the step again).
STEP_STATUS_OF_EVENT: dict[str, str] = {
    "STEP_START": "IN_PROGRESS",
    "STEP_RESTARTED": "IN_PROGRESS",
    "STEP_UP_FOR_RETRY": "IN_PROGRESS",
    "STEP_SUCCESS": "SUCCESS",
    "STEP_FAILURE": "FAILURE",
    "STEP_SKIPPED": "SKIPPED",
}
EVENT_TYPES = frozenset({PLANNED, MATERIALIZATION, *STEP_STATUS_OF_EVENT})


@dataclass(frozen=True)
class RunEvent:
    """One event of a run, as much of it as progress needs."""

    kind: str  # a DagsterEventType value (EVENT_TYPES)
    step_key: str | None
    asset: str | None  # the asset key's last path component, for the asset events
    timestamp: float


# (run id, cursor or None) -> the run's events after the cursor, in order, and the new cursor.
ReadEvents = Callable[[str, str | None], tuple[list[RunEvent], str | None]]


@dataclass
class _Folded:
    lock: threading.Lock = field(default_factory=threading.Lock)
    cursor: str | None = None
    planned: dict[str, str] = field(default_factory=dict)
    materialized: set[str] = field(default_factory=set)
    steps: dict[str, StepStat] = field(default_factory=dict)

    def fold(self, events: Iterable[RunEvent]) -> None:
        for event in events:
            if event.kind == PLANNED and event.asset:
                self.planned[event.asset] = event.step_key or ""
            elif event.kind == MATERIALIZATION and event.asset:
                self.materialized.add(event.asset)
            elif event.kind in STEP_STATUS_OF_EVENT and event.step_key:
                known = self.steps.get(event.step_key)
                started = known.start_time if known is not None else event.timestamp
                self.steps[event.step_key] = StepStat(event.step_key, STEP_STATUS_OF_EVENT[event.kind], started)


class RunEventLog:
    """The folded events of the runs read lately (at most `max_runs`, least recently read go first).

    Reads of one run are serialized (a refresh and a cancel's look at once), so each event is
    folded once, in order; reads of different runs do not wait for each other.
    """

    def __init__(self, read: ReadEvents, max_runs: int = 10_000) -> None:
        self._read = read
        self._max_runs = max_runs
        self._runs: OrderedDict[str, _Folded] = OrderedDict()
        self._guard = threading.Lock()

    def read(self, run_id: str) -> tuple[RunAssets, list[StepStat]]:
        """What the run planned and materialized so far, and its steps' newest statuses. Raises
        what the source raises (DagsterUnavailable); what was folded before stays."""
        with self._guard:
            folded = self._runs.get(run_id)
            if folded is None:
                folded = self._runs[run_id] = _Folded()
                while len(self._runs) > self._max_runs:
                    self._runs.popitem(last=False)
            else:
                self._runs.move_to_end(run_id)
        with folded.lock:
            events, cursor = self._read(run_id, folded.cursor)
            folded.fold(events)
            folded.cursor = cursor or folded.cursor
            assets = RunAssets(dict(folded.planned), frozenset(folded.materialized))
            return assets, list(folded.steps.values())
