"""Runs as Celery tasks on any number of worker machines: dagster-celery's launcher, two gaps closed.

`dagster_celery.launcher.CeleryRunLauncher` sends each run to a broker; long-lived Celery workers
(`jewel_dagster.runtime.processes.celery_worker`) execute it in a pool child forked from a process that
imported the code location once (warm, like our forkserver, but on many machines). Two things it
gets wrong for us, both seen against this project (DAGSTER-NOTES, "CeleryRunLauncher tried"):

- `terminate` revokes the task but never marks the run CANCELING, so the interrupted run worker
  reports a failure, run monitoring calls it FAILURE and `run_retries` starts it again: a cancel
  that restarts the request. Here the run is CANCELING first, as Dagster's own launchers do.
- Its health check trusts the result backend: a worker killed with SIGKILL (or a machine lost)
  leaves its task STARTED forever, so run monitoring never fails the run. Here a STARTED task
  also needs its worker (the hostname Celery stored with the state) to answer a broadcast ping;
  one that has not answered for DEAD_AFTER_SECONDS is reported FAILED, so monitoring fails the
  run and `run_retries` sends it to another worker. A worker restarted under the same name
  answers the ping but no longer holds the task (`inspect().query_task`): the same, after the same
  time. Not at the first missed ping: on a loaded
  machine a live worker missed a 1 s ping and its running run was failed and retried. One ping per
  worker per check, cached a few seconds: the daemon checks every run each `poll_interval_seconds`.

Private Dagster API (checked against dagster 1.13.27, canary in tests/unit/test_celery_runs.py):
`dagster._core.launcher` for `CheckRunHealthResult` and `WorkerStatus`, the types a launcher's
health check answers with (dagster-celery imports them from there too), and `LaunchRunContext`,
what `launch_run` is given.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from celery.result import AsyncResult
from dagster import DagsterRun, DagsterRunStatus
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

from jewel_dagster.runtime.instance_plugins.queued_cancels import cancelled_before_launch

PING_TIMEOUT_SECONDS = 2.0
PING_CACHE_SECONDS = 1.0
# Unanswered pings for this long, across checks, before a worker counts as dead. 8 s still failed
# (and retried) a live worker's run once in a clean-clone suite run on 2 busy cores: a lost worker
# is found ~20 s later now, a false alarm costs a whole run.
DEAD_AFTER_SECONDS = 20.0
_FINISHED = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)


class JewelCeleryRunLauncher(CeleryRunLauncher):
    """CeleryRunLauncher whose cancels stay cancels and whose dead workers fail their runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pings: dict[str, tuple[float, bool]] = {}  # worker hostname -> (when, answered)
        self._silent_since: dict[str, float] = {}  # worker hostname -> first unanswered ping
        self._pings_lock = threading.Lock()
        self.dead_after_seconds = DEAD_AFTER_SECONDS
        self.ping_timeout_seconds = PING_TIMEOUT_SECONDS  # a test with no worker shortens the wait

    def launch_run(self, context: LaunchRunContext) -> None:
        """Celery's launch, except for a run cancelled while it left the queue (queued_cancels.py)."""
        if cancelled_before_launch(self._instance, context.dagster_run):
            return
        super().launch_run(context)

    def terminate(self, run_id: str) -> bool:
        """Mark the run CANCELING, then revoke its task (the worker interrupts the run)."""
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.status in _FINISHED or DAGSTER_CELERY_TASK_ID_TAG not in run.tags:
            return False
        if run.status != DagsterRunStatus.CANCELING:
            self._instance.report_run_canceling(run)
        return super().terminate(run_id)

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """Celery's answer, except that a STARTED task whose worker is gone is FAILED."""
        result = super().check_run_worker_health(run)
        task_id = run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)
        if task_id is None or self.celery.AsyncResult(task_id).state != "STARTED":
            return result
        hostname = _hostname(self.celery.AsyncResult(task_id))
        if hostname is None:
            return result
        if not self._alive(hostname):
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"Celery worker {hostname} holds the run's task but has not answered a ping for "
                f"{self.dead_after_seconds:.0f} s (killed, or its machine lost).",
            )
        if not self._still_holds(hostname, task_id):
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"Celery worker {hostname} answers but has not known the run's task for "
                f"{self.dead_after_seconds:.0f} s: it was restarted (the task died with the worker before).",
            )
        return result

    def _still_holds(self, hostname: str, task_id: str) -> bool:
        """False once the worker named ``hostname`` has answered for ``dead_after_seconds`` that
        it does not hold ``task_id``. A supervisor restarts a killed worker under the same name
        (compose keeps the container's host name; the soak restarted one within seconds), so the
        ping answers and the dead incarnation's run stayed STARTED until max_runtime."""
        inspect = self.celery.control.inspect(destination=[hostname], timeout=self.ping_timeout_seconds)
        replies = inspect.query_task(task_id)
        known = (replies or {}).get(hostname)
        key = f"{hostname} {task_id}"
        now = time.monotonic()
        with self._pings_lock:
            if known is None or task_id in known:  # no answer (the ping decides), or it holds it
                self._silent_since.pop(key, None)
                return True
            first = self._silent_since.setdefault(key, now)
            return now - first < self.dead_after_seconds

    def _alive(self, hostname: str) -> bool:
        """False once ``hostname`` has missed every ping for ``dead_after_seconds``."""
        answered = self._answers(hostname)
        now = time.monotonic()
        with self._pings_lock:
            if answered:
                self._silent_since.pop(hostname, None)
                return True
            first = self._silent_since.setdefault(hostname, now)
            return now - first < self.dead_after_seconds

    def _answers(self, hostname: str) -> bool:
        now = time.monotonic()
        with self._pings_lock:
            cached = self._pings.get(hostname)
        if cached is not None and now - cached[0] < PING_CACHE_SECONDS:
            return cached[1]
        replies = self.celery.control.ping(destination=[hostname], timeout=self.ping_timeout_seconds) or []
        answered = any(hostname in reply for reply in replies)
        with self._pings_lock:
            self._pings[hostname] = (now, answered)
        return answered

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Mapping[str, Any]) -> JewelCeleryRunLauncher:
        return cls(inst_data=inst_data, **config_value)


def _hostname(result: AsyncResult) -> str | None:
    """The worker that accepted the task: Celery stores {"pid", "hostname"} with STARTED."""
    info = result.info
    if isinstance(info, Mapping) and isinstance(info.get("hostname"), str):
        return str(info["hostname"])
    return None
