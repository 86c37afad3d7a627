"""A run as the gateway sees it, whichever source (GraphQL or the run storage) read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jewel_dagster.contract import WILL_RETRY_TAG

_ENDED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})


@dataclass(frozen=True)
class StepStat:
    step_key: str
    status: str | None  # IN_PROGRESS | SUCCESS | FAILURE | SKIPPED
    start_time: float | None


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    job_name: str
    status: str  # Dagster's DagsterRunStatus name
    steps: list[StepStat] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    end_time: float | None = None  # unix seconds the run ended (None while it runs)

    @property
    def ended(self) -> bool:
        """Final: the run ended and no retry of it (run_retries) is coming."""
        return self.status in _ENDED and not (self.status == "FAILURE" and self.tags.get(WILL_RETRY_TAG) == "true")


def run_info_from(raw: dict[str, Any]) -> RunInfo:
    """A run from GraphQL fields runId, jobName, status, tags and stepStats."""
    steps = [StepStat(s["stepKey"], s["status"], s["startTime"]) for s in raw["stepStats"]]
    tags = {t["key"]: t["value"] for t in raw["tags"]}
    return RunInfo(raw["runId"], raw["jobName"], raw["status"], steps, tags, raw.get("endTime"))
