"""Batched questions about the runs of many requests at once, for the background jobs.

One query per batch of partitions (Dagster's `RunsFilter` takes a list of tag values), never one
query per partition: at 100,000 requests a per-partition query was what made a sweep slow.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import dagster as dg

from jewel_dagster.contract import PARTITION_TAG

BACKGROUND_TAG = "jewel/background"  # regeneration | retention: limited in dagster.yaml's tag_concurrency_limits

# A run in one of these may still change the request's blobs and events: background jobs leave
# its request alone.
UNFINISHED_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
    dg.DagsterRunStatus.SUSPENDED,
]


def busy_partitions(instance: dg.DagsterInstance, partitions: Sequence[str]) -> set[str]:
    """The partitions among these with a run in progress (one query)."""
    if not partitions:
        return set()
    records = instance.get_run_records(
        dg.RunsFilter(tags={PARTITION_TAG: list(partitions)}, statuses=UNFINISHED_RUN_STATUSES)
    )
    return {r.dagster_run.tags[PARTITION_TAG] for r in records}


def runs_by_partition(
    instance: dg.DagsterInstance, partitions: Sequence[str], tags: dict[str, str] | None = None
) -> dict[str, list[dg.DagsterRun]]:
    """Every run of these partitions (optionally with these tags too), oldest first (one query)."""
    grouped: dict[str, list[dg.DagsterRun]] = defaultdict(list)
    if not partitions:
        return grouped
    records = instance.get_run_records(
        dg.RunsFilter(tags={**(tags or {}), PARTITION_TAG: list(partitions)}), ascending=True
    )
    for record in records:
        grouped[record.dagster_run.tags[PARTITION_TAG]].append(record.dagster_run)
    return grouped
