"""The Celery app of a scale-out run worker: `celery -A jewel_dagster.runtime.processes.celery_worker worker`.

Start it on any machine that sees the same dagster.yaml (DAGSTER_HOME), PostgreSQL, blob store
and broker as the daemon and the webserver:

    celery -A jewel_dagster.runtime.processes.celery_worker worker -Q dagster -n w1@%h --concurrency 2 \
        --prefetch-multiplier 1

Why not `dagster-celery worker start`: it runs this same `celery worker` in a subprocess (a stop
signal must then reach a process group), writes a config folder under DAGSTER_HOME on every start,
and does not import the code location before the pool forks. Here:

- Broker and result backend come from CELERY_BROKER_URL and CELERY_RESULT_BACKEND, the variables
  dagster.celery.yaml gives the launcher (`JewelCeleryRunLauncher`).
- The code location (`jewel_dagster.definitions`, with numpy, OpenCV and Dagster) is imported in
  the worker's main process, before the pool forks: every run starts in a warm child, imports paid
  once per worker, as with our forkserver.
- Each run is tagged `jewel/worker` with the worker that executes it (`-n`), so the Dagster UI
  and the tests see where a run went.
- Workers keep the code they imported: restart them on deploy.

Dagster's instance must exist before workers start (several processes creating a fresh one at
once hit alembic's "more than one head" once): devtools.stack starts them after the webserver.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from celery.signals import task_prerun
from dagster import DagsterInstance
from dagster_celery.config import DEFAULT_CONFIG
from dagster_celery.make_app import make_app
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG
from dagster_celery.tasks import create_execute_job_task, create_resume_job_task

from jewel_dagster.contract import WORKER_TAG

DEFAULT_QUEUE = "dagster"
TAG_WAIT_SECONDS = 5.0

app = make_app(
    app_args={
        "broker": os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
        "backend": os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/1"),
        "include": ["jewel_dagster.definitions"],
        "config_source": {**DEFAULT_CONFIG, "broker_connection_retry_on_startup": True},
        "task_default_queue": DEFAULT_QUEUE,
    }
)
execute_job = create_execute_job_task(app)
resume_job = create_resume_job_task(app)

_instance: DagsterInstance | None = None
_instance_lock = threading.Lock()


def _dagster() -> DagsterInstance:
    """One instance per pool child, made after the fork (a connection pool must not be shared)."""
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = DagsterInstance.get()
        return _instance


def run_id_of(packed: object) -> str | None:
    """The run id inside dagster-celery's packed ExecuteRunArgs / ResumeRunArgs (a JSON-able dict)."""
    # Read, not deserialized: the args hold the whole job origin, and this needs one field.
    if not isinstance(packed, dict) or packed.get("__class__") not in ("ExecuteRunArgs", "ResumeRunArgs"):
        return None
    run_id = packed.get("pipeline_run_id", packed.get("run_id"))  # serdes stores run_id under its old name
    return run_id if isinstance(run_id, str) else None


@task_prerun.connect
def tag_run_with_worker(task: Any = None, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    """Before a run executes: tag it with this worker's name (`-n`, e.g. w1@host)."""
    run_id = run_id_of((kwargs or {}).get("execute_job_args_packed"))
    if run_id is None or task is None:
        return
    instance = _dagster()
    # add_run_tags rewrites the stored run whole: the launcher's own add_run_tags (the task id,
    # written just after sending the task) would otherwise race ours and drop one of them.
    deadline = time.monotonic() + TAG_WAIT_SECONDS
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is None or run.tags.get(DAGSTER_CELERY_TASK_ID_TAG) == task.request.id:
            break
        time.sleep(0.02)
    instance.add_run_tags(run_id, {WORKER_TAG: str(task.request.hostname)})
