"""What every run worker built for itself before its first model call, built once in the warm code
server's forkserver instead (imported from warm_code_server.PRELOAD), so forked workers find it made.

Measured between the daemon's RUN_STARTING and prepare_canvas's resize call (issue 28; quiet
2-core machine, forked children of a process with PRELOAD imported; py-spy of the run workers):

- The code location's repository, the run's job and its run config schema: a worker's
  `ReconstructableJob.get_definition()` (Dagster's `core_execute_run`) turned the imported
  `Definitions` into a repository (~14 ms), resolved the job and built its schema for the
  execution plan (~15 ms). Dagster caches all three on the objects the worker looks them up on.
- Its first instance: `DagsterInstance.from_ref` took ~27 ms in a worker forked from a process
  that had never opened one, ~20 ms once one was opened and read here (config types, SQLAlchemy
  and dialect set-up that outlive the instance); its first run read 5.8 -> 3.9 ms. The instance
  opened here is the one DAGSTER_HOME names (the code server's, which its runs' refs describe);
  it is closed before any fork (SQLite storages keep no connection: none is inherited), and
  nothing is done when DAGSTER_HOME is unset.
- The model services' HTTP client set-up (resources/http_services.py, `warm_service_clients`):
  the shared TLS context and httpx's transport modules, ~56 ms for the first two clients (the
  resize, SAM3).

The code location is the module the code server serves (`-m`), which it names in the environment
its forkserver inherits (warm_code_server.CODE_LOCATION_ENV); without it nothing is built, so a
test or tool importing this module builds nothing.

What is built is what the worker would build from the same imported modules and configuration:
one process image per code server, as the preloaded imports already are (a code change or a
deploy restarts the code server). A failure here is logged and leaves the workers building it as
before: the forkserver, which imports this module, must not die of it.

Public Dagster API only: `Definitions.get_repository_def`, `RepositoryDefinition.get_all_jobs`,
`JobDefinition.run_config_schema` (a property; not marked @public, not private either),
`DagsterInstance.get` and `get_run_by_id`.
Canaries: tests/unit/test_worker_warmup.py (a fresh interpreter with PRELOAD imported builds no
repository, job or schema for a run; `warm_instance` leaves no thread and reads the instance),
tests/unit/test_run_worker_preload.py (nothing imported on the way to the first model call).
"""

from __future__ import annotations

import importlib
import logging
import os

import dagster as dg

from jewel_dagster.runtime.processes.warm_code_server import CODE_LOCATION_ENV

_log = logging.getLogger(__name__)


def warm(defs: dg.Definitions) -> int:
    """Build `defs`' repository, every job in it and each job's run config schema; how many jobs
    (0 when building failed: the workers then build them, as stock Dagster's do)."""
    try:
        jobs = defs.get_repository_def().get_all_jobs()
        for job in jobs:
            job.run_config_schema  # noqa: B018 - built and cached on the job definition
    except Exception:  # noqa: BLE001 - a warm-up: the worker builds what is missing, as before
        _log.exception("the code location's jobs could not be built ahead of the run workers")
        return 0
    return len(jobs)


def warm_instance() -> bool:
    """Open and read the instance of DAGSTER_HOME, and close it; whether there was one to open."""
    if not os.environ.get("DAGSTER_HOME"):
        return False
    try:
        with dg.DagsterInstance.get() as instance:
            instance.get_run_by_id("00000000-0000-0000-0000-000000000000")
    except Exception:  # noqa: BLE001 - a warm-up: each worker opens its own, as before
        _log.exception("the instance could not be opened ahead of the run workers")
        return False
    return True


def code_location_definitions() -> list[dg.Definitions]:
    """The `Definitions` of the module CODE_LOCATION_ENV names (already imported by the forkserver's
    preload; [] when none is named)."""
    name = os.environ.get(CODE_LOCATION_ENV)
    if not name:
        return []
    module = importlib.import_module(name)
    return [value for value in vars(module).values() if isinstance(value, dg.Definitions)]


def _warm_run_workers() -> None:
    from jewel_dagster.resources.http_services import warm_service_clients

    try:
        for defs in code_location_definitions():
            warm(defs)
    except Exception:  # noqa: BLE001 - a warm-up: the workers build what is missing, as before
        _log.exception("the code location could not be loaded ahead of the run workers")
    warm_instance()
    try:
        warm_service_clients()
    except Exception:  # noqa: BLE001 - a warm-up: each worker builds its own, as before
        _log.exception("the model services' HTTP client set-up could not be built ahead of the run workers")


# Imported by the forkserver (warm_code_server.PRELOAD), after the code location itself; the code
# server names its code location in the environment the forkserver inherits. Elsewhere (a test, a
# tool importing the module) nothing is built.
if os.environ.get(CODE_LOCATION_ENV):
    _warm_run_workers()
