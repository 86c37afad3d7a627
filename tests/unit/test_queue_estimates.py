"""The background refresher behind `queuePosition` and `etaSeconds` against a real Dagster test
instance: the medians it learns from finished runs, queued runs in Dagster's order, a step waiting
in the `gpu` pool. It is also the canary of the instance and storage reads it makes (the run
records' `create_timestamp`, `get_records_for_run`, the pool's `pending_steps`)."""

# No `from __future__ import annotations` here: Dagster reads the ops' annotations at run time.
import uuid
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest

from gateway.dagster_api.queue_estimates import QueueEstimates
from gateway.eta import LAUNCH, TAIL, exec_key, gap_key
from jewel_dagster.contract import FULL_JOB, GPU_POOL, JOB_OPS, SEGMENT_OP
from tests.unit.test_prompt_queue import _origin


@pytest.fixture
def instance() -> Iterator[Any]:
    with dg.instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as inst:
        yield inst


def _full_job() -> Any:
    """A stand-in named like the pipeline's job, with its steps in order."""
    ops = []
    for name in JOB_OPS[FULL_JOB]:

        @dg.op(name=name, ins={"after": dg.In(dg.Nothing)})
        def step() -> None:
            pass

        ops.append(step)

    @dg.job(name=FULL_JOB, executor_def=dg.in_process_executor)
    def full() -> None:
        previous = None
        for op in ops:
            previous = op(previous) if previous is not None else op()

    return full


def _run(instance: Any, status: dg.DagsterRunStatus, priority: int = 0) -> str:
    """A run stored with `status` (a queued run needs an origin: the one test_prompt_queue makes)."""
    run = dg.DagsterRun(
        job_name=FULL_JOB,
        run_id=uuid.uuid4().hex,
        status=status,
        tags={"dagster/priority": str(priority)},
        remote_job_origin=_origin(FULL_JOB),
    )
    return str(instance.add_run(run).run_id)


def test_refresh_learns_from_finished_runs_and_places_queued_and_waiting_runs(instance: Any) -> None:
    job = _full_job()
    for _ in range(2):
        assert job.execute_in_process(instance=instance).success
    estimates = QueueEstimates(interval=0, instance_factory=lambda: instance)
    estimates.refresh()
    for op in JOB_OPS[FULL_JOB]:  # seeded from the runs that finished before the gateway started
        assert estimates.medians.count(gap_key(op)) == 2 and estimates.medians.count(exec_key(op)) == 2
    assert estimates.medians.count(TAIL) == 2
    estimates.medians.add(LAUNCH, 1.0)  # in-process runs are never queued: no launch of their own

    holder = _run(instance, dg.DagsterRunStatus.STARTED)
    waiter = _run(instance, dg.DagsterRunStatus.STARTED)
    late = _run(instance, dg.DagsterRunStatus.QUEUED)
    urgent = _run(instance, dg.DagsterRunStatus.QUEUED, priority=5)
    pool = instance.event_log_storage
    pool.set_concurrency_slots(GPU_POOL, 1)
    assert pool.claim_concurrency_slot(GPU_POOL, holder, SEGMENT_OP).is_claimed
    assert not pool.claim_concurrency_slot(GPU_POOL, waiter, SEGMENT_OP).is_claimed

    estimates.refresh()
    found = {run_id: estimates.lookup(run_id) for run_id in (holder, waiter, late, urgent)}
    assert found[holder] is not None and found[holder].position is None
    assert found[waiter] is not None and found[waiter].position == 0  # first in the pool's line
    assert found[urgent] is not None and found[urgent].position == 0  # priority first
    assert found[late] is not None and found[late].position == 1
    assert found[urgent].ends_at is not None and found[late].ends_at is not None
    assert found[late].ends_at >= found[urgent].ends_at
    estimates.close()


class _CountedRecords:
    """The instance, counting the run records its `get_run_records` hands back."""

    def __init__(self, instance: Any) -> None:
        self._instance = instance
        self.records = 0

    def get_run_records(self, *args: Any, **kwargs: Any) -> Any:
        found = self._instance.get_run_records(*args, **kwargs)
        self.records += len(found)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._instance, name)


def test_a_queued_run_is_read_once_while_it_waits(instance: Any) -> None:
    """A burst's queue is read by its ids each refresh; a queued run's record (a stored run to
    deserialize) only when first seen, where every refresh read every queued run's record. A run
    that leaves the queue, or is cancelled in it, is seen at the next refresh."""
    counted = _CountedRecords(instance)
    estimates = QueueEstimates(interval=0, instance_factory=lambda: counted)
    estimates.refresh()  # seeded: no finished run
    queued = [_run(instance, dg.DagsterRunStatus.QUEUED) for _ in range(20)]
    counted.records = 0
    for _ in range(3):
        estimates.refresh()
        assert all(estimates.lookup(run_id) is not None for run_id in queued)
    assert counted.records == 20, counted.records  # 60 when each refresh read them all
    assert [estimates.lookup(run_id).position for run_id in queued] == list(range(20))  # type: ignore[union-attr]
    started, cancelled = queued[0], queued[1]
    instance.handle_run_event(started, dg.DagsterEvent(event_type_value="PIPELINE_START", job_name=FULL_JOB))
    instance.report_run_canceled(instance.get_run_by_id(cancelled))
    estimates.refresh()
    assert estimates.lookup(started) is not None and estimates.lookup(started).queued is False  # type: ignore[union-attr]
    assert estimates.lookup(cancelled) is None
    assert estimates.lookup(queued[2]).position == 0  # type: ignore[union-attr]
    estimates.close()
