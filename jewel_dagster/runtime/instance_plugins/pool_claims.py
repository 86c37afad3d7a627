"""Event log storages for pool claims: a slot is never granted twice, and a blocked claim is
re-tried every quarter second.

Double claims. Dagster 1.13.27's `SqlEventLogStorage._claim_concurrency_slot`
(dagster/_core/storage/event_log/sql_event_log.py) selects a free slot row
`with_for_update(skip_locked=True)`, then updates it `WHERE id = ?` in a second statement. On SQLite
`FOR UPDATE` compiles to nothing (and pysqlite runs the SELECT outside the write transaction); on
PostgreSQL dagster-postgres's index connection is AUTOCOMMIT, so the row lock ends with the SELECT.
Steps claiming the same slot at once all read it free, all update it, all are told CLAIMED: with a
`gpu` pool of 1, two generations then share the GPU. Measured with the test below (30 trials, 3 or
4 processes), stock SQLite granted the one slot more than once in 16-25 trials, stock PostgreSQL
in 5-10; with this override, 0 of 180 on each. Our override keeps the select but makes the update
conditional (`WHERE id = ? AND step_key IS NULL AND NOT deleted`) and reads its row count: SQLite
serialises writers and PostgreSQL re-checks the WHERE on the row a concurrent UPDATE just
committed, so only the first update changes the row. An update that changes no row means someone
else took that slot: we try the next free slot, skipping the ones already lost, and answer BLOCKED
when none is left (the step keeps its assigned pending entry and asks again, as Dagster's loop
already does).
tests/unit/test_pool_claim_race.py reproduces it: several processes wait on a barrier and claim the
only slot of a fresh pool at the same instant, many trials, on SQLite and PostgreSQL; it asserts
exactly one claim is granted per trial, and (canary) that Dagster's stock storages do grant it twice.

A pool's first claims on PostgreSQL. The first step to claim a pool with no limit row creates it
from `concurrency.pools.default_limit` (`SqlEventLogStorage.initialize_concurrency_limit_to_default`):
an INSERT in a transaction, and on IntegrityError an UPDATE in the same transaction. On PostgreSQL
the failed INSERT has aborted that transaction, so the UPDATE raises InFailedSqlTransaction and
the claiming run fails ("An exception was thrown during execution"): two runs reaching their first
`gpu` step at the same moment on a fresh database (or after the default limit changed) lose one
of them. Seen in the scale-out test, one run in 8-60 on its fresh database. Our PostgreSQL storage
inserts with ON CONFLICT DO NOTHING instead and updates only when nothing was inserted, in one
transaction that never aborts. SQLite rolls back only the failed statement, so its stock method
stands. tests/unit/test_pool_initialization_race.py: processes initialising a fresh pool at the
same instant; none may fail and the pool ends with the default's slots (canary: stock fails).

Quick retries. A step of the `gpu` pool that finds both slots taken asks again after 1 s, then ever
longer, up to 15 s (Dagster's InstanceConcurrencyContext backs off unless the storage names an
interval). Under a burst the GPU then idles for seconds while steps sleep: measured here, 20
requests took 4.2x the GPU bound. These storages answer a blocked claim with a fixed
`claim_interval_seconds`, which the context honours. dagster.yaml names them (devtools.stack writes
the SQLite path in). Everything else is Dagster's own SQLite and PostgreSQL event log storage.

First come, first served per request. Dagster assigns a free slot to the pending step of highest
priority, then earliest `create_timestamp` (`assign_pending_steps`), and stamps that column with
the database's CURRENT_TIMESTAMP when the step claims. Two faults for a person watching the queue
position: on SQLite CURRENT_TIMESTAMP has whole seconds, and ties are broken by the scan of the
pending steps' index (concurrency key, run id, step key), i.e. by the random run id: a step that
joined the line later in the same second but whose run id sorts first is served first (its
waiting neighbour's position rises, and `get_concurrency_info` lists the line in the same
order). And each step of a request joins at the back when it claims: a request that finished its
segmentation waits behind every request that began later, its position rising from step to step,
and early requests' tails stretch. Our `add_pending_step` stamps a step with its run's start
(RUN_START, the run storage's `start_time`, to the microsecond; the claim time when the run has
none): the line is ordered by priority, then by when the request began, as the run queue is
(started runs left it in its order; a caller held back by its `tag_concurrency_limits` starts
later, so fairness between callers holds in the pool too). `gateway.eta` reads this order, and
counts a request started earlier whose next pooled step has not joined yet as ahead, since it will
be. tests/unit/test_pool_claims.py: a later request's step waits behind an earlier request's next
step; steps claimed in one second keep their requests' order.

Lean events. Each event is stored without its logging tags and without a `user_message` that
repeats its message (runtime/storage/lean_events.py says why; ~9 % of a request's event bytes).

Run ends wake the run queue. `store_event` is Dagster's, and an event that ends a run then wakes
the queue daemon (jewel_dagster/runtime/instance_plugins/queue_wake.py), so the next queued run takes the freed
place without waiting for the queue's poll.

Private symbols used (checked against dagster 1.13.27):
- `dagster._core.storage.event_log.sqlite.sqlite_event_log.SqliteEventLogStorage`: subclassed.
- `dagster._core.storage.event_log.sql_event_log.SqlEventLogStorage._claim_concurrency_slot`:
  overridden (signature `(concurrency_key, run_id, step_key) -> ConcurrencySlotStatus`; called by
  the public `claim_concurrency_slot` once the step's pending entry is assigned). Our version uses
  the storage's `index_connection()`, an abstract method of that class.
- `dagster._core.storage.event_log.schema.ConcurrencySlotsTable`: the slot rows (`id`,
  `concurrency_key`, `run_id`, `step_key`, `deleted`).
- `SqlEventLogStorage.add_pending_step` (public name, private class): overridden, signature
  `(concurrency_key, run_id, step_key, priority=None, should_assign=False)`; called by
  `claim_concurrency_slot` once per step. `PendingStepsTable`: `concurrency_key`, `run_id`,
  `step_key`, `priority`, `assigned_timestamp`, `create_timestamp` (unique on the first three).
- `SqlEventLogStorage.initialize_concurrency_limit_to_default` (public name, private class):
  overridden for PostgreSQL; ours reads `has_concurrency_limits_table`, `has_default_pool_limit_col`,
  `has_instance`, `_instance.global_op_concurrency_default_limit`,
  `_reconcile_concurrency_limits_from_slots()` and `_allocate_concurrency_slots(conn, key, n)` as
  Dagster's own method does, and `ConcurrencyLimitsTable` (`concurrency_key` unique, `limit`,
  `using_default_limit`).
- `dagster._serdes.ConfigurableClassData`: the `from_config_value` signature.
- `dagster._utils.concurrency.ConcurrencyClaimStatus`: the claim answer, given an interval.
- `dagster._utils.concurrency.ConcurrencySlotStatus`: what `_claim_concurrency_slot` answers.
`dagster_postgres.event_log.PostgresEventLogStorage` and `dagster_postgres.utils` are that
package's public modules.
Canaries: tests/unit/test_pool_claim_race.py (one grant per slot; the stock storages still race)
and tests/unit/test_pool_claims.py (a blocked claim names our interval).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import sqlalchemy as db
from dagster._core.storage.event_log.schema import ConcurrencyLimitsTable, ConcurrencySlotsTable, PendingStepsTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._serdes import ConfigurableClassData
from dagster._utils.concurrency import ConcurrencyClaimStatus, ConcurrencySlotStatus
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_config, pg_url_from_config
from sqlalchemy.dialects.postgresql import insert as postgres_insert

from jewel_dagster.runtime.executor import claim_sleep, interruptible_wait
from jewel_dagster.runtime.instance_plugins import queue_wake
from jewel_dagster.runtime.storage import alembic_scripts
from jewel_dagster.runtime.storage.lean_events import lean_event
from jewel_dagster.runtime.storage.run_partitions import KnownRunPartitions
from jewel_dagster.runtime.storage.sqlite_shard_engines import KeptShardEngines

# Where these storages are the instance's, a step blocked on a slot sleeps between its checks
# (claim_sleep.py): the interval below is then the only cadence of a waiting step.
claim_sleep.install()
# ... and stops as soon as its run is cancelled, not at its next slot (interruptible_wait.py).
interruptible_wait.install()
# Each instance opened from here on checks its storages' schema without re-reading Dagster's
# migration scripts (alembic_scripts.py).
alembic_scripts.install()

DEFAULT_CLAIM_INTERVAL_SECONDS = 0.25
_INTERVAL_FIELD = dg.Field(float, is_required=False, default_value=DEFAULT_CLAIM_INTERVAL_SECONDS)


def _quick(status: ConcurrencyClaimStatus, interval: float) -> ConcurrencyClaimStatus:
    if status.is_claimed or status.sleep_interval is not None:
        return status
    return status.with_sleep_interval(interval)


def claim_free_slot(
    index_connection: AbstractContextManager[db.Connection], concurrency_key: str, run_id: str, step_key: str
) -> ConcurrencySlotStatus:
    """Give `step_key` of `run_id` one free slot of `concurrency_key`, or answer BLOCKED.

    Dagster's select-then-update, with an update that only takes a slot still free: a slot is
    granted to whoever's update lands first, never twice.
    """
    slots = ConcurrencySlotsTable.c
    free = db.and_(
        slots.concurrency_key == concurrency_key,
        slots.step_key.is_(None),
        slots.deleted == False,  # noqa: E712  # Dagster's own comparison; SQLite stores 0/1
    )
    lost: list[int] = []
    with index_connection as conn:
        while True:
            candidates = db.select(slots.id).where(free)
            if lost:
                candidates = candidates.where(slots.id.not_in(lost))
            row = conn.execute(candidates.with_for_update(skip_locked=True).limit(1)).fetchone()
            if row is None:
                return ConcurrencySlotStatus.BLOCKED
            taken = conn.execute(
                ConcurrencySlotsTable.update()
                .where(db.and_(slots.id == row[0], free))
                .values(run_id=run_id, step_key=step_key)
            )
            if taken.rowcount == 1:
                return ConcurrencySlotStatus.CLAIMED
            lost.append(row[0])  # claimed by another step between our select and our update


def line_timestamp(run_start: float | None, now: float | None = None) -> datetime:
    """Where a step of a run stands in a pool's line: its run's start (else now), as the naive
    UTC datetime Dagster's pending steps table stores, to the microsecond."""
    at = run_start if run_start is not None else (time.time() if now is None else now)
    return datetime.fromtimestamp(at, tz=UTC).replace(tzinfo=None)


class _QuickRaceFreeClaims(SqlEventLogStorage):
    """What both storages change: blocked claims name a short retry interval, and a slot is
    taken only while still free. Listed first in their bases, so `super()` is Dagster's storage."""

    _claim_interval: float

    def claim_concurrency_slot(
        self, concurrency_key: str, run_id: str, step_key: str, priority: int | None = None
    ) -> ConcurrencyClaimStatus:
        status = super().claim_concurrency_slot(concurrency_key, run_id, step_key, priority)
        return _quick(status, self._claim_interval)

    def _claim_concurrency_slot(self, concurrency_key: str, run_id: str, step_key: str) -> ConcurrencySlotStatus:
        return claim_free_slot(self.index_connection(), concurrency_key, run_id, step_key)

    def add_pending_step(
        self,
        concurrency_key: str,
        run_id: str,
        step_key: str,
        priority: int | None = None,
        should_assign: bool = False,
    ) -> None:
        """Dagster's, with the step placed in the line by its run's start (the module says why)."""
        record = self._instance.get_run_record_by_id(run_id) if self.has_instance else None
        enqueued = line_timestamp(record.start_time if record is not None else None)
        with self.index_connection() as conn:
            try:
                conn.execute(
                    PendingStepsTable.insert().values(
                        run_id=run_id,
                        step_key=step_key,
                        concurrency_key=concurrency_key,
                        priority=priority or 0,
                        create_timestamp=enqueued,
                        assigned_timestamp=db.func.now() if should_assign else None,
                    )
                )
            except db.exc.IntegrityError:
                pass  # already in the line (Dagster's own method ignores it too)

    def store_event(self, event: dg.EventLogEntry) -> None:
        """Dagster's, of the event without its copies (runtime/storage/lean_events.py), then a
        run's end wakes the run queue, so a queued run takes the freed place now rather than at
        the queue's next poll (queue_wake.py, processes/queue_daemon.py)."""
        super().store_event(lean_event(event))
        if self.has_instance:
            queue_wake.wake_on_run_end(self._instance, event)

    def store_event_batch(self, events: Sequence[dg.EventLogEntry]) -> None:
        """Dagster's, of the events without their copies (a batch of materializations)."""
        super().store_event_batch([lean_event(event) for event in events])


class QuickClaimSqliteEventLogStorage(
    _QuickRaceFreeClaims, KnownRunPartitions, KeptShardEngines, SqliteEventLogStorage
):
    """Also keeps one engine per shard (runtime/storage/sqlite_shard_engines.py) and a running
    run's partition known (runtime/storage/run_partitions.py)."""

    def __init__(
        self,
        base_dir: str,
        inst_data: ConfigurableClassData | None = None,
        claim_interval_seconds: float = DEFAULT_CLAIM_INTERVAL_SECONDS,
    ) -> None:
        super().__init__(base_dir, inst_data=inst_data)
        self._claim_interval = claim_interval_seconds

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": dg.StringSource, "claim_interval_seconds": _INTERVAL_FIELD}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> QuickClaimSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)


class QuickClaimPostgresEventLogStorage(_QuickRaceFreeClaims, KnownRunPartitions, PostgresEventLogStorage):
    def __init__(
        self, *args: Any, claim_interval_seconds: float = DEFAULT_CLAIM_INTERVAL_SECONDS, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._claim_interval = claim_interval_seconds

    def initialize_concurrency_limit_to_default(self, concurrency_key: str) -> bool:
        """Dagster's method without its abort on PostgreSQL: the row is inserted ON CONFLICT DO
        NOTHING, so a concurrent first claim of the same pool finds the row instead of failing."""
        default_limit = self._instance.global_op_concurrency_default_limit if self.has_instance else None
        if default_limit is None or not self.has_concurrency_limits_table or not self.has_default_pool_limit_col:
            return super().initialize_concurrency_limit_to_default(concurrency_key)
        self._reconcile_concurrency_limits_from_slots()
        limits = ConcurrencyLimitsTable.c
        with self.index_transaction() as conn:
            inserted = conn.execute(
                postgres_insert(ConcurrencyLimitsTable)
                .values(concurrency_key=concurrency_key, limit=default_limit, using_default_limit=True)
                .on_conflict_do_nothing(index_elements=[limits.concurrency_key])
            )
            if inserted.rowcount == 0:
                conn.execute(
                    ConcurrencyLimitsTable.update()
                    .values(limit=default_limit)
                    .where(db.and_(limits.concurrency_key == concurrency_key, limits.limit != default_limit))
                )
            self._allocate_concurrency_slots(conn, concurrency_key, default_limit)
        return True

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {**pg_config(), "claim_interval_seconds": _INTERVAL_FIELD}  # type: ignore[dict-item]

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> QuickClaimPostgresEventLogStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
            claim_interval_seconds=config_value.get("claim_interval_seconds", DEFAULT_CLAIM_INTERVAL_SECONDS),
        )
