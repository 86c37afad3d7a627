"""A run as the gateway sees it, whichever source (GraphQL or the run storage) read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jewel_dagster.contract import WILL_RETRY_TAG

_ENDED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
# Dagster stores a failed run's FAILURE status first and its `dagster/will_retry` tag a moment
# later (DagsterInstance.handle_new_event, two writes): read in between, a run that is about to be
# retried looked FAILED (a final SSE event, a webhook) and then RUNNING again. A failure this
# recent without the tag is not final yet; past it, a run without the tag (run retries off) is.
RETRY_DECISION_SECONDS = 5.0


@dataclass(frozen=True)
class StepStat:
    step_key: str
    status: str | None  # IN_PROGRESS | SUCCESS | FAILURE | SKIPPED
    start_time: float | None


@dataclass(frozen=True)
class RunAssets:
    """What this run plans to materialize and what it did so far, from its own events.

    Progress follows these, not a fixed list of the job's steps: a subset run or a re-execution
    plans (ASSET_MATERIALIZATION_PLANNED, written when the run is created) only what it executes,
    whatever the step layout, and each asset's ASSET_MATERIALIZATION is reported as it happens.
    """

    planned: dict[str, str] = field(default_factory=dict)  # asset -> the step key that makes it
    materialized: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    job_name: str
    status: str  # Dagster's DagsterRunStatus name
    steps: list[StepStat] = field(default_factory=list)  # each step's newest status, from the same events
    tags: dict[str, str] = field(default_factory=dict)
    end_time: float | None = None  # unix seconds the run ended (None while it runs)
    assets: RunAssets | None = None  # None: not read (e.g. a look at the owner tag only)
    update_time: float | None = None  # unix seconds of the run's last status change (listings only)

    @property
    def step_starts(self) -> dict[str, float]:
        """step key -> when it first started, for the steps this read saw start."""
        return {s.step_key: s.start_time for s in self.steps if s.start_time is not None}

    def retry_may_follow(self, now: float) -> bool:
        """A FAILURE that Dagster's retry daemon may still re-launch: its `will_retry` is "true"
        (the daemon turns it to "false" when the retry cannot be launched, e.g. its code server
        is down), or not decided yet (RETRY_DECISION_SECONDS). ``now``: unix seconds."""
        if self.status != "FAILURE":
            return False
        will_retry = self.tags.get(WILL_RETRY_TAG)
        if will_retry is not None:
            return will_retry == "true"
        return self.end_time is not None and now - self.end_time < RETRY_DECISION_SECONDS

    @property
    def ended(self) -> bool:
        """Final: the run ended and no retry of it (run_retries) is coming."""
        return self.status in _ENDED and not (self.status == "FAILURE" and self.tags.get(WILL_RETRY_TAG) == "true")


def run_info_from(raw: dict[str, Any], assets: RunAssets | None = None) -> RunInfo:
    """A run from GraphQL fields runId, jobName, status, tags (stepStats, endTime, updateTime when asked)."""
    steps = [StepStat(s["stepKey"], s["status"], s["startTime"]) for s in raw.get("stepStats") or []]
    tags = {t["key"]: t["value"] for t in raw["tags"]}
    return RunInfo(
        raw["runId"], raw["jobName"], raw["status"], steps, tags, raw.get("endTime"), assets, raw.get("updateTime")
    )
