"""docker-compose.yml's services started as processes: no Docker engine runs on these machines.

For each service built from our image, its `command` runs with the environment compose would give
the container (the Dockerfile's ENV, then `environment`, `${VAR}` interpolated from the project's
`.env`), each in a working folder and a DAGSTER_HOME of its own (containers share nothing but the
network), its dagster.yaml written from that environment by the function the image's entry point
runs (devtools.instance_config). Container
networking is mapped onto loopback: a service's host name becomes 127.0.0.1 and each port it
listens on a free port, in environment values, command arguments and the workspace file it names.
The services that are not ours (postgres, azurite) are the machine's PostgreSQL (a database and
role of the test's own) and an Azurite the test starts.

What only a real `docker compose up` checks: the image build (Dockerfile steps, installed
packages), networks and DNS, volumes, health checks, restart policies (README, "Deployment").
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from dotenv import dotenv_values

from devtools.instance_config import write_instance_config
from devtools.stack import BIN, REPO_ROOT, free_port

APP_DIR = "/app"  # the image's WORKDIR: the repo's files are there
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[?-])(?P<arg>[^}]*))?\}")
_PORT_FLAGS = ("-p", "--port", "--blobPort")
_HOST_FLAGS = ("-h", "--host", "--blobHost")


def load_compose(path: Path = REPO_ROOT / "docker-compose.yml") -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())  # PyYAML resolves the `<<: *app` merge keys
    assert isinstance(data, dict)
    return data


def interpolate(value: str, project_env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` from the project's `.env`."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = project_env.get(name)
        if op in (":?", "?") and not current:
            raise ValueError(f"compose refuses to start: {name}: {arg}")
        if op in (":-", "-") and not current:
            return arg or ""
        return current or ""

    return _INTERPOLATION.sub(one, value)


def dockerfile_env(dockerfile: Path = REPO_ROOT / "Dockerfile") -> dict[str, str]:
    """The `ENV` lines of our Dockerfile (KEY=VALUE pairs)."""
    env: dict[str, str] = {}
    for line in dockerfile.read_text().splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def dockerfile_entrypoint(dockerfile: Path = REPO_ROOT / "Dockerfile") -> list[str]:
    """The image's ENTRYPOINT (exec form): what runs before every service's command."""
    match = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile.read_text(), flags=re.MULTILINE)
    assert match, "the Dockerfile has no exec-form ENTRYPOINT"
    entrypoint: list[str] = yaml.safe_load(match[1])
    return entrypoint


def service_env(service: Mapping[str, Any], project_dir: Path) -> dict[str, str]:
    """What compose puts in the container's environment (before host and port mapping)."""
    project_env = {k: v or "" for k, v in dotenv_values(project_dir / ".env").items()}
    env = dict(dockerfile_env())
    assert not service.get("env_file"), "no service reads all of .env (docs/deployment.md)"
    for key, value in (service.get("environment") or {}).items():
        env[key] = interpolate(str(value), project_env)
    return env


def listen_port(service: Mapping[str, Any]) -> int | None:
    """The port a service's command listens on inside its container: a port flag of its command,
    else its API_PORT (`python -m gateway` listens where the settings say)."""
    command = [str(a) for a in service.get("command") or []]
    for flag, value in zip(command, command[1:], strict=False):
        if flag in _PORT_FLAGS:
            return int(value)
    api_port = (service.get("environment") or {}).get("API_PORT")
    return int(api_port) if api_port else None


@dataclass
class LoopbackNetwork:
    """Compose's service names and container ports, mapped onto 127.0.0.1 and free ports."""

    ports: dict[tuple[str, int], int] = field(default_factory=dict)  # (service, container port) -> port
    postgres: dict[str, str] = field(default_factory=dict)  # user, password, database of ours

    def add(self, service: str, container_port: int, port: int | None = None) -> int:
        self.ports[(service, container_port)] = port or free_port()
        return self.ports[(service, container_port)]

    @property
    def services(self) -> set[str]:
        return {service for service, _ in self.ports}

    def rewrite(self, value: str) -> str:
        """`service:port` anywhere in a value (URLs, connection strings) -> `127.0.0.1:<port>`."""
        for (service, inner), outer in self.ports.items():
            value = re.sub(rf"(?<![\w.-]){re.escape(service)}:{inner}(?!\d)", f"127.0.0.1:{outer}", value)
        return self._postgres_url(value)

    def _postgres_url(self, value: str) -> str:
        if not self.postgres or "://" not in value or not value.startswith("postgres"):
            return value
        parts = urlsplit(value)
        netloc = f"{self.postgres['user']}:{self.postgres['password']}@{parts.hostname}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc, path=f"/{self.postgres['database']}"))

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """Environment values rewritten; a `X_HOST` naming a service moves its `X_PORT` along."""
        out = {key: self.rewrite(value) for key, value in env.items()}
        for key, value in env.items():
            if key.endswith("_HOST") and value in self.services:
                out[key] = "127.0.0.1"
                port_key = key[: -len("_HOST")] + "_PORT"
                if port_key in env:
                    out[port_key] = str(self.ports[(value, int(env[port_key]))])
        if self.postgres and out.get("DAGSTER_PG_HOST") == "127.0.0.1":  # the test's own database
            out["DAGSTER_PG_USERNAME"] = self.postgres["user"]
            out["DAGSTER_PG_PASSWORD"] = self.postgres["password"]
            out["DAGSTER_PG_DB"] = self.postgres["database"]
        return out

    def workspace(self, path: Path, into: Path) -> Path:
        """A copy of a workspace file whose `grpc_server` entries point at the mapped ports."""
        data = yaml.safe_load(path.read_text())
        for entry in data["load_from"]:
            server = entry.get("grpc_server")
            if server and server["host"] in self.services:
                server["port"] = self.ports[(server["host"], int(server["port"]))]
                server["host"] = "127.0.0.1"
        into.write_text(yaml.safe_dump(data))
        return into


def service_process(
    name: str, service: Mapping[str, Any], network: LoopbackNetwork, project_dir: Path, root: Path
) -> tuple[list[str], dict[str, str], Path]:
    """(argv, environment, working folder) that run one service of our image as a process here."""
    home = root / name / "dagster_home"
    workdir = root / name / "app"
    home.mkdir(parents=True)
    workdir.mkdir(parents=True)
    env = network.env(service_env(service, project_dir))
    assert env.get("DAGSTER_HOME"), f"{name}: the image sets DAGSTER_HOME"
    env["DAGSTER_HOME"] = str(home)
    # What the image's entry point does before the command: dagster.yaml from this environment.
    assert dockerfile_entrypoint() == ["python", "-m", "devtools.instance_config"], dockerfile_entrypoint()
    write_instance_config(env)
    # The image's interpreter and entry points are the virtualenv's; /app is the repo, read-only.
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["HOME"] = str(root / name)
    command = [str(a) for a in service["command"]]
    own_port = listen_port(service)
    if "API_PORT" in env and own_port is not None:  # a service configured by its settings
        env["API_PORT"], env["BIND_HOST"] = str(network.ports[(name, own_port)]), "127.0.0.1"
    argv: list[str] = []
    for i, arg in enumerate(command):
        before = command[i - 1] if i else ""
        if i == 0 and arg == "python":
            arg = sys.executable
        elif i == 0:
            arg = str(BIN / arg)
        elif before in _HOST_FLAGS:
            arg = "127.0.0.1"  # loopback only, never every interface of the machine
        elif before in _PORT_FLAGS and own_port is not None:
            arg = str(network.ports[(name, own_port)])
        elif arg.startswith(APP_DIR + "/"):
            source = REPO_ROOT / arg[len(APP_DIR) + 1 :]
            arg = str(network.workspace(source, workdir / source.name)) if "workspace" in source.name else str(source)
        argv.append(arg)
    return argv, env, workdir
