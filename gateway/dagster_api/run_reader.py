"""What the gateway reads of Dagster's runs, whichever source answers (STATUS_SOURCE).

Two implementations: `GraphQLRunReader` (dagster-webserver's GraphQL, the default: works against
any Dagster deployment) and `StorageRunReader` (the run and event storage under DAGSTER_HOME,
read in-process: a few milliseconds and no webserver CPU). `StatusCache` sits in front of either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from gateway.dagster_api.models import RunInfo
from gateway.dagster_api.run_events import RunEventLog


class RunReader(Protocol):
    """Reads only; a source that cannot answer raises DagsterUnavailable (DagsterError if it
    answered something else)."""

    events: RunEventLog  # each run's planned/materialized assets and step statuses, read once

    def runs_tagged(self, tags: dict[str, str], newest: bool = True, with_steps: bool = True) -> RunInfo | None:
        """The newest (or oldest) run with these tags; with its steps and assets unless told not
        to (the oldest run is asked for its owner tag only)."""
        ...

    def runs_listed(
        self,
        tags: dict[str, str],
        statuses: Sequence[str],
        updated_after: float | None = None,
        updated_before: float | None = None,
        limit: int = 100,
    ) -> list[RunInfo]:
        """Runs with these tags in these statuses (Dagster's names), newest first (as Dagster's
        run storage orders them), at most `limit`, last updated after/before the bounds (unix
        seconds): ids, job, status, tags, end and update time; no steps or assets (the webhook
        watcher's listings: it reads a run's progress when it needs it)."""
        ...

    def newest_run_id(self, tags: dict[str, str]) -> str | None:
        """Only the id of the newest run with these tags: what tells an ended run is still the answer."""
        ...

    def newest_texts_of(self, request_id: str, assets: Sequence[str]) -> dict[str, dict[str, str]]:
        """asset -> the text metadata (label -> text) of the request's newest materialization of
        it; assets never materialized for the request map to {}."""
        ...

    def failure_of(self, run_id: str) -> tuple[str | None, str]:
        """(failed step key, a message a person can read) of a failed run: its first step failure
        (the cause first when there is one), else its run failure's message."""
        ...

    def fidelity_check(self, request_id: str) -> dict[str, Any] | None:
        """The newest `fidelity` check result of the request: {"passed", "status", "violations",
        "runId"}, and "reason" when the metrics could not be measured; None when it never ran."""
        ...

    def close(self) -> None: ...
