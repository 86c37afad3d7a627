"""docker-compose.scaleout.yml and dagster.celery.yaml: valid, and naming what exists."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import yaml

from devtools.stack import REPO_ROOT, celery_overlay, prepare_dagster_home
from tests.support.infra import missing
from tests.unit.test_deployment_files import SCHEMA


def _override() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO_ROOT / "docker-compose.scaleout.yml").read_text()))


def test_the_override_matches_the_compose_spec_and_names_real_services() -> None:
    if not SCHEMA.exists():
        missing("the compose-spec schema is not installed (make node-tools installs it from the npm registry)")
    override = _override()
    jsonschema.validate(override, json.loads(SCHEMA.read_text()))
    base = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    worker = override["services"]["worker"]
    assert "extends" not in worker  # Compose 1.29 cannot extend a service with depends_on
    assert worker["image"] == base["daemon"]["image"]
    assert "jewel_dagster.runtime.processes.celery_worker" in " ".join(worker["command"])
    for name in set(override["services"]) - {"redis", "worker", "lb"}:
        assert name in base, f"the override changes {name}, which docker-compose.yml does not have"


def test_the_celery_overlay_replaces_whole_blocks_of_the_postgres_file(tmp_path: Any) -> None:
    overlay = celery_overlay()
    assert overlay["run_launcher"]["class"] == "JewelCeleryRunLauncher"
    env = {
        "DAGSTER_HOME": str(tmp_path),
        "DAGSTER_PG_URL": "postgresql://u@h/db",
        "RUN_LAUNCHER": "celery",
        "CELERY_BROKER_URL": "redis://b/0",
        "CELERY_RESULT_BACKEND": "redis://b/1",
        "CELERY_QUEUE": "q",
        "RUN_MONITORING_POLL_SECONDS": "2",
        "MAX_CONCURRENT_RUNS": "9",  # ignored: the workers' slots are the limit
        "CELERY_WORKERS": "3",
        "CELERY_CONCURRENCY": "2",
    }
    prepare_dagster_home(env)
    written = yaml.safe_load((tmp_path / "dagster.yaml").read_text())
    # Runs wait in Dagster's queue (rows), not in the broker where start_timeout_seconds fails them.
    assert written["run_coordinator"]["class"] == "PromptQueuedRunCoordinator"
    assert written["concurrency"]["runs"]["max_concurrent_runs"] == 6
    assert written["run_launcher"]["config"]["default_queue"] == "q"
    assert written["run_monitoring"]["poll_interval_seconds"] == 2
    assert written["run_storage"]["class"] == "PostgresRunStorage"  # kept from dagster.postgres.yaml


def test_the_embedded_default_needs_no_broker_and_celery_without_one_is_refused(tmp_path: Any) -> None:
    import pytest

    prepare_dagster_home({"DAGSTER_HOME": str(tmp_path)})
    launcher = yaml.safe_load((tmp_path / "dagster.yaml").read_text())["run_launcher"]
    # The default launcher with run-worker health checks (runtime/instance_plugins/run_launcher.py), not Celery's.
    module = "jewel_dagster.runtime.instance_plugins.run_launcher"
    assert launcher == {"module": module, "class": "WorkerCheckingRunLauncher"}
    with pytest.raises(ValueError, match="CELERY_BROKER_URL"):
        prepare_dagster_home({"DAGSTER_HOME": str(tmp_path), "RUN_LAUNCHER": "celery"})
