"""The code location's repository and jobs built once in the warm code server's forkserver, so a
forked run worker does not build them again before its RUN_START.

Why: a run worker's first act after opening its instance is `ReconstructableJob.get_definition()`
(Dagster's `core_execute_run`), which turns the imported `Definitions` into a repository
(`Definitions.get_repository_def`, cached on the object), resolves the run's asset job, and then
builds that job's run config schema for the execution plan. The forkserver imports the code
location (warm_code_server.PRELOAD) but built none of these, so every worker did, between the
daemon's RUN_STARTING and the run's RUN_START: ~14 ms for the repository and ~15 ms for a job and
its schema in a forked child (quiet 2-core machine), ~8 % of a run worker's samples up to
RUN_START (py-spy, instant backends, issue 28). Built here, in the process the workers are forked
from, each worker finds them made (Dagster caches all three on the objects it looks them up on).
So with the model services' shared TLS context (resources/http_services.py, `tls_context`).

What is built is what the worker would build from the same imported module: one process image per
code server, as the preloaded imports already are (a code change restarts the code server). A
failure here is logged and leaves the workers building them as before: the forkserver, which
imports this module, must not die of it.

Public Dagster API only: `Definitions.get_repository_def`, `RepositoryDefinition.get_all_jobs`
and `JobDefinition.run_config_schema` (a property; not marked @public, not private either).
Canary: tests/unit/test_warm_definitions.py (a child forked after `warm` builds none of them).
"""

from __future__ import annotations

import logging

import dagster as dg

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


def _warm_code_location() -> None:
    from jewel_dagster.definitions import defs
    from jewel_dagster.resources.http_services import warm_service_clients

    warm(defs)
    # The model services' HTTP clients: a worker's first two (resize, SAM3) each built a TLS
    # context, the first also imported httpx's transport (~56 ms before SAM3's call, issue 28).
    try:
        warm_service_clients()
    except Exception:  # noqa: BLE001 - a warm-up: each worker builds its own, as before
        _log.exception("the model services' HTTP client set-up could not be built ahead of the run workers")


# Imported by the forkserver (warm_code_server.PRELOAD), after the code location itself.
_warm_code_location()
