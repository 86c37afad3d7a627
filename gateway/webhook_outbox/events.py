"""Which webhook events a caller asked for, and the `started`/`progress` events of running runs.

A start may name `webhookEvents` among EVENTS (checked in gateway/schemas.py); without it a caller
gets the final one, as before events could be chosen. The choice rides on the run as a tag
(absent for the default), and runs that want `started` or `progress` carry a second tag the
watcher filters running runs on.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.schemas import WEBHOOK_EVENTS as EVENTS
from jewel_dagster.contract import WEBHOOK_EVENTS_TAG, WEBHOOK_LIVE_TAG

FINAL_EVENTS = ("completed", "failed", "cancelled")
LIVE_EVENTS = ("started", "progress")
_FINAL_OF_STATUS = {"SUCCESS": "completed", "FAILURE": "failed", "CANCELED": "cancelled"}


def event_tags(events: Sequence[str] | None) -> dict[str, str]:
    """Run tags for a start's `webhookEvents`; none for the default (the final events)."""
    if events is None or sorted(events) == sorted(FINAL_EVENTS):
        return {}
    tags = {WEBHOOK_EVENTS_TAG: ",".join(e for e in EVENTS if e in events)}
    if any(e in LIVE_EVENTS for e in events):
        tags[WEBHOOK_LIVE_TAG] = "1"
    return tags


def wanted(tags: dict[str, str]) -> set[str]:
    """The events a run's caller asked for."""
    chosen = tags.get(WEBHOOK_EVENTS_TAG)
    return set(FINAL_EVENTS) if chosen is None else set(chosen.split(","))


def final_event(run_status: str) -> str:
    """The final event of a finished run's Dagster status."""
    return _FINAL_OF_STATUS[run_status]


class LiveEvents:
    """Which `started`/`progress` events a running run owes now, at most one `progress` per
    `min_seconds` per workflow (this replica's; replicas that see the same progress at once send it
    once, since its id names the progress value). Forgets runs once they end."""

    def __init__(self, min_seconds: float) -> None:
        self._min_seconds = min_seconds
        self._last: dict[str, tuple[float, int]] = {}  # run id -> (when, progress) of its last progress event
        self._started: set[str] = set()

    def due(self, run_id: str, tags: dict[str, str], progress: int, now: float) -> list[tuple[str, str]]:
        """(event, delivery id) pairs to queue for a run seen running at `progress` percent."""
        chosen = wanted(tags)
        owed: list[tuple[str, str]] = []
        if "started" in chosen and run_id not in self._started:
            self._started.add(run_id)
            owed.append(("started", f"{run_id}.started"))
        if "progress" in chosen:
            last = self._last.get(run_id)
            if last is None or (progress != last[1] and now - last[0] >= self._min_seconds):
                self._last[run_id] = (now, progress)
                owed.append(("progress", f"{run_id}.progress.{progress}"))
        return owed

    def forget(self, running: set[str]) -> None:
        """Drop what is kept of runs no longer running."""
        self._started &= running
        self._last = {r: v for r, v in self._last.items() if r in running}
