"""A warm run worker finds the code location's repository, its job and the job's run config schema
built (jewel_dagster/runtime/processes/worker_warmup.py, in warm_code_server.PRELOAD): nothing
of them is built between the daemon's RUN_STARTING and the run's RUN_START (issue 28). The
forkserver's instance warm-up leaves nothing open to fork."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import pytest

from devtools.stack import prepare_dagster_home
from jewel_dagster.runtime.processes import worker_warmup

# In a fresh interpreter, as the forkserver does: the preloaded modules, then what a run worker does
# before RUN_START (Dagster's `core_execute_run`: the job from its reconstructable, then the run
# config schema for the execution plan), counting what Dagster builds for it.
PROBE = """
import importlib
import os
from jewel_dagster.runtime.processes.warm_code_server import CODE_LOCATION_ENV, PRELOAD
os.environ[CODE_LOCATION_ENV] = "jewel_dagster.definitions"  # as the warm code server sets it
for name in PRELOAD:
    importlib.import_module(name)
import dagster._core.definitions.definitions_class as definitions_class
import dagster._core.definitions.job_definition as job_definition
from dagster._core.definitions.reconstruct import ReconstructableRepository
built = []
def counting(module, name):
    original = getattr(module, name)
    def counted(*args, **kwargs):
        built.append(name)
        return original(*args, **kwargs)
    setattr(module, name, counted)
counting(definitions_class, "_create_repository_using_definitions_args")
counting(job_definition, "_create_run_config_schema")
repository = ReconstructableRepository.for_module("jewel_dagster.definitions", "defs", None)
job = repository.get_reconstructable_job("jewelry_generation").get_definition()
job.run_config_schema
print(" ".join(built))
"""


def test_a_run_worker_builds_no_repository_job_or_schema_before_its_run_start() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "", f"built in the run worker, not in the forkserver: {out.stdout.strip()}"


def test_warm_builds_every_jobs_run_config_schema() -> None:
    @dg.asset
    def one() -> int:
        return 1

    defs = dg.Definitions(assets=[one], jobs=[dg.define_asset_job("all_assets")])
    assert worker_warmup.warm(defs) == 2  # ours and Dagster's implicit asset job
    # Canary: Dagster keeps the schema on the job (a private attribute); when this fails, look
    # where it keeps it now, or whether it still builds it per run.
    for job in defs.get_repository_def().get_all_jobs():
        assert job._run_config_schema is not None


def test_warm_survives_definitions_that_fail_to_build() -> None:
    class Broken(dg.Definitions):
        def get_repository_def(self) -> dg.RepositoryDefinition:
            raise RuntimeError("a broken code location")

    assert worker_warmup.warm(Broken()) == 0


def test_warm_instance_opens_reads_and_closes_dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepare_dagster_home({"DAGSTER_HOME": str(tmp_path)})
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    threads = threading.active_count()
    assert worker_warmup.warm_instance()
    assert threading.active_count() == threads  # nothing left running in the forkserver to fork


def test_warm_instance_without_dagster_home_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert not worker_warmup.warm_instance()
