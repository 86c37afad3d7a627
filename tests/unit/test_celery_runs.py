"""The scale-out launcher's two fixes over dagster-celery's: cancels stay cancels, dead workers fail.

Against the machine's Redis as broker and result backend (db 13/14, keys unique per test); no
worker runs here (the end-to-end test in tests/e2e/test_scaleout.py has real ones).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from dagster import DagsterEvent, DagsterInstance, DagsterRun, DagsterRunStatus
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

from jewel_dagster.runtime.instance_plugins.celery_runs import (
    CheckRunHealthResult,
    JewelCeleryRunLauncher,
    LaunchRunContext,
    WorkerStatus,
)
from jewel_dagster.runtime.processes.celery_worker import run_id_of
from tests.support.e2e_stack import wait_until
from tests.support.infra import redis_url

Launched = tuple[DagsterInstance, JewelCeleryRunLauncher]


@pytest.fixture
def launched() -> Iterator[Launched]:
    launcher = JewelCeleryRunLauncher(default_queue="dagster", broker=redis_url(13), backend=redis_url(14))
    # No worker runs here: every ping and task query waits out its whole timeout for replies that
    # never come (2 s each in production; 4.6 s of the dead-worker test, 2 s of another).
    launcher.ping_timeout_seconds = 0.3
    with DagsterInstance.ephemeral() as instance:
        launcher.register_instance(instance)
        yield instance, launcher


def _started_run(instance: DagsterInstance, task_id: str) -> DagsterRun:
    run = DagsterRun(
        job_name="jewelry_generation",
        run_id=str(uuid.uuid4()),
        status=DagsterRunStatus.STARTED,
        tags={DAGSTER_CELERY_TASK_ID_TAG: task_id},
    )
    return instance.add_run(run)


def test_terminate_marks_the_run_canceling_before_revoking(launched: Launched) -> None:
    """Stock terminate leaves it STARTED: monitoring then calls the interrupted run FAILURE and retries it."""
    instance, launcher = launched
    run = _started_run(instance, uuid.uuid4().hex)
    assert launcher.terminate(run.run_id) is True
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.CANCELING  # type: ignore[union-attr]


def test_terminate_refuses_runs_that_ended_or_never_reached_celery(launched: Launched) -> None:
    instance, launcher = launched
    done = instance.add_run(DagsterRun(job_name="j", run_id=str(uuid.uuid4()), status=DagsterRunStatus.SUCCESS,
                                       tags={DAGSTER_CELERY_TASK_ID_TAG: "t"}))  # fmt: skip
    queued = instance.add_run(DagsterRun(job_name="j", run_id=str(uuid.uuid4()), status=DagsterRunStatus.NOT_STARTED))
    assert launcher.terminate(done.run_id) is False
    assert launcher.terminate(queued.run_id) is False
    assert launcher.terminate(str(uuid.uuid4())) is False
    assert instance.get_run_by_id(done.run_id).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]


def test_a_started_task_whose_worker_does_not_answer_is_failed(launched: Launched) -> None:
    """A SIGKILLed worker leaves its task STARTED in the backend forever; stock reports RUNNING."""
    instance, launcher = launched
    task_id = uuid.uuid4().hex
    launcher.celery.backend.store_result(task_id, {"pid": 1, "hostname": f"gone-{task_id}@nowhere"}, "STARTED")
    run = _started_run(instance, task_id)
    launcher.dead_after_seconds = 0.5
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING  # one missed ping is not death
    time.sleep(0.6)
    launcher._pings.clear()
    health = launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.FAILED
    assert f"gone-{task_id}@nowhere" in (health.msg or "")


def test_a_started_task_whose_worker_answers_is_running(
    launched: tuple[DagsterInstance, JewelCeleryRunLauncher], monkeypatch: pytest.MonkeyPatch
) -> None:
    instance, launcher = launched
    task_id = uuid.uuid4().hex
    alive = f"alive-{task_id}@here"
    launcher.celery.backend.store_result(task_id, {"pid": 1, "hostname": alive}, "STARTED")
    monkeypatch.setattr(launcher.celery.control, "ping", lambda destination, timeout: [{alive: {"ok": "pong"}}])
    assert launcher.check_run_worker_health(_started_run(instance, task_id)).status == WorkerStatus.RUNNING


def test_a_started_task_whose_worker_was_restarted_under_its_name_is_failed(
    launched: tuple[DagsterInstance, JewelCeleryRunLauncher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The soak killed worker w0 and its supervisor restarted it as w0: the ping answered, the run
    stayed STARTED for good. The new incarnation does not hold the task: FAILED, as for silence."""
    instance, launcher = launched
    task_id = uuid.uuid4().hex
    again = f"again-{task_id}@here"
    launcher.celery.backend.store_result(task_id, {"pid": 1, "hostname": again}, "STARTED")
    monkeypatch.setattr(launcher.celery.control, "ping", lambda destination, timeout: [{again: {"ok": "pong"}}])

    class Inspect:
        def __init__(self, destination: list[str], timeout: float) -> None:
            assert destination == [again]

        def query_task(self, *ids: str) -> dict[str, Any]:
            return {again: holds}

    monkeypatch.setattr(launcher.celery.control, "inspect", Inspect)
    run = _started_run(instance, task_id)
    launcher.dead_after_seconds = 0.5
    holds: dict[str, Any] = {task_id: ["active", {"id": task_id}]}
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING  # its worker runs it
    holds = {}
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING  # not at the first answer
    wait_until(lambda: launcher.check_run_worker_health(run).status == WorkerStatus.FAILED, "FAILED", 10)
    assert "restarted" in (launcher.check_run_worker_health(run).msg or "")


def test_canary_the_private_health_types_we_answer_with() -> None:
    """dagster._core.launcher (checked against dagster 1.13.27): the types monitoring reads."""
    result = CheckRunHealthResult(WorkerStatus.FAILED, "why")
    assert result.status == WorkerStatus.FAILED and result.msg == "why"
    assert {"RUNNING", "SUCCESS", "FAILED", "UNKNOWN"} <= {s.name for s in WorkerStatus}


def test_the_worker_reads_the_run_id_from_dagster_celerys_packed_arguments() -> None:
    """The shape dagster-celery 0.29.27 packs ExecuteRunArgs in (recorded from a real task; the
    end-to-end test checks real runs get their worker tag)."""
    run_id = str(uuid.uuid4())
    packed = {"__class__": "ExecuteRunArgs", "pipeline_origin": {}, "pipeline_run_id": run_id, "instance_ref": None,
              "set_exit_code_on_failure": True}  # fmt: skip
    assert run_id_of(packed) == run_id
    assert run_id_of("not a dict") is None


def test_a_run_cancelled_as_it_left_the_queue_is_not_sent_to_a_worker(launched: Launched) -> None:
    """The queue daemon's STARTING overwrote the cancel's CANCELED (queued_cancels.py): the event
    log still has the cancel, so no task is sent and the run is CANCELED again."""
    instance, launcher = launched
    run = instance.add_run(DagsterRun(job_name="jewelry_generation", run_id=str(uuid.uuid4())))
    instance.report_run_canceling(run)
    instance.report_run_canceled(run)
    instance.report_dagster_event(DagsterEvent("PIPELINE_STARTING", "jewelry_generation"), run_id=run.run_id)
    starting = instance.get_run_by_id(run.run_id)
    assert starting is not None and starting.status == DagsterRunStatus.STARTING
    launcher.launch_run(LaunchRunContext(dagster_run=starting, workspace=None))
    after = instance.get_run_by_id(run.run_id)
    assert after is not None and after.status == DagsterRunStatus.CANCELED
    assert DAGSTER_CELERY_TASK_ID_TAG not in after.tags  # never sent to the broker
