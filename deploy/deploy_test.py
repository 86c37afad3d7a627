"""`make deploy-test`: the compose deployment built and run for real (docs/deployment.md).

Starts a Docker engine if none answers (installing Debian's docker.io and Compose 1.29 if
missing), builds the stand-ins of the public images (deploy/standins/, cached by tag), copies the
repo's files to a scratch folder (a clean clone: no .env, no .venv), and there runs the commands
of docs/deployment.md's "One machine" and "Scale-out" blocks word for word, checking:

1. one machine: every service healthy, processes not root, each service given only its variables,
   /docs off; a request with an API key completes through the published gateway and its result
   is fetched from the host (artifact route) and decodes as an image; the UI on the host's
   loopback only; PostgreSQL, Azurite, the code server and the reference server published nowhere; a
   restart of each service loses no finished request; `down` then `up` keeps the requests;
2. observability: Prometheus (profile `observability`) scrapes the gateway's /metrics through the
   compose network;
3. scale-out: 2 workers and 2 gateways behind nginx; 20 requests through the balancer complete
   on both workers, each webhook once; the run slot limit is workers x concurrency; the runs'
   JSON log lines keep their own level; a worker killed mid-run: its run completes on the other.

Prints each stage's duration; at the end removes its containers, networks and volumes and its
scratch folder, and stops the engine if it started it (also on SIGTERM/SIGINT). Not part of
`make test`; `.ci/run` runs it last.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devtools.deploy_docs import doc_commands  # noqa: E402

PROJECT = "jeweldeploytest"
SCRATCH = Path(os.environ.get("DEPLOY_TEST_DIR", "/var/tmp/jewel-deploy-test"))
# The host ports the stack publishes: free ones of this machine (set by use_free_ports), so another
# process on 8001, 3000 or 9090 (a `make run`, a test's Prometheus) neither breaks the test nor is
# broken by it. The compose files read them from the environment (UI_HOST_PORT, ...); the
# documented commands stay word for word.
API_PORT = 8001
UI_PORT = 3000
PROMETHEUS_PORT = 9090
GATEWAY = f"http://127.0.0.1:{API_PORT}"
UI = f"http://127.0.0.1:{UI_PORT}"
KEYS = ["deploy-key-a", "deploy-key-b"]
OURS = ["reference-server", "code-server", "webserver", "daemon", "gateway"]
UNPUBLISHED = ["postgres", "azurite", "reference-server", "code-server", "daemon"]
T = TypeVar("T")


def seconds_setting(name: str, default: float) -> float:
    """A deadline of the test, from the environment when set. The defaults hold on this 2-core
    machine shared at load ~10; on a busier one raise them (what is slow is the machine starting
    a dozen Python processes at once, not the deployment) rather than edit the test."""
    return float(os.environ.get(name) or default)


# Until every service of a `docker compose up` is healthy (stage 1 cold start, stage 2's eleven
# containers at once).
HEALTHY_SECONDS = seconds_setting("DEPLOY_TEST_HEALTHY_SECONDS", 600)
# One request, start to COMPLETED (about 20 s on a quiet machine).
REQUEST_SECONDS = seconds_setting("DEPLOY_TEST_REQUEST_SECONDS", 300)
# docs/deployment.md, "Scale-out": a killed worker's run is failed by run monitoring once its
# worker has not answered for 20 s, at the next 10 s poll, then retried on the other worker.
KILLED_RUN_BOUND_SECONDS = seconds_setting("DEPLOY_TEST_KILLED_RUN_SECONDS", 180)


def say(message: str) -> None:
    print(f"deploy-test: {message}", file=sys.stderr, flush=True)


def run(cmd: str | list[str], cwd: Path | None = None, timeout: float = 1800, check: bool = True) -> str:
    """A command (a string: through bash, as a user types it); its output, stderr included."""
    shell = isinstance(cmd, str)
    done = subprocess.run(
        cmd,
        shell=shell,
        executable="/bin/bash" if shell else None,
        cwd=cwd,
        env=ENV,
        timeout=timeout,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{cmd!r} exited {done.returncode}:\n{done.stdout[-4000:]}")
    return done.stdout


ENV = {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT, "COMPOSE_HTTP_TIMEOUT": "300", "DOCKER_BUILDKIT": "0"}


def free_port() -> int:
    """A TCP port nothing on this machine listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def use_free_ports() -> None:
    """Publish the API (the gateway, then the balancer), the UI and Prometheus on free ports."""
    global API_PORT, UI_PORT, PROMETHEUS_PORT, GATEWAY, UI
    API_PORT, UI_PORT, PROMETHEUS_PORT = free_port(), free_port(), free_port()
    GATEWAY, UI = f"http://127.0.0.1:{API_PORT}", f"http://127.0.0.1:{UI_PORT}"
    ENV.update(
        GATEWAY_PUBLISH=f"{API_PORT}:8001",  # the scale-out command sets its own, for the replicas
        LB_PUBLISH=f"{API_PORT}:8001",
        UI_HOST_PORT=str(UI_PORT),
        PROMETHEUS_HOST_PORT=str(PROMETHEUS_PORT),
    )
    say(f"host ports: API {API_PORT}, UI {UI_PORT}, Prometheus {PROMETHEUS_PORT}")


def wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 (reported if the deadline passes)
            last = exc
        time.sleep(every)
    raise AssertionError(f"{what}: not after {timeout:.0f} s (last error: {last!r})")


# ---------------------------------------------------------------- engine and tools


class Engine:
    """A Docker engine answering; started here (and stopped at the end) if none did."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.shim: Path | None = None

    def answers(self) -> bool:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0

    def start(self) -> None:
        missing = [tool for tool in ("dockerd", "docker-compose", "debootstrap") if not shutil.which(tool)]
        if missing:
            say(f"installing docker.io docker-compose debootstrap ({', '.join(missing)} missing)")
            subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "docker.io", "docker-compose", "debootstrap"],
                check=True,
                capture_output=True,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        if not self.answers():
            say("starting dockerd")
            log = open("/var/tmp/jewel-deploy-test-dockerd.log", "ab")  # noqa: SIM115 (lives as long as dockerd)
            self.process = subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
            wait_for("dockerd answers", self.answers, 120)
        if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
            # Debian ships Compose 1.29 as `docker-compose` only; the documented commands say
            # `docker compose`: a CLI plugin that hands them to it, in a Docker CLI configuration
            # folder of the test's own (DOCKER_CONFIG, for the test's commands only): nothing is
            # written to the home folder, and a killed run leaves nothing behind there.
            config = SCRATCH / "docker-config"
            self.shim = config / "cli-plugins" / "docker-compose"
            self.shim.parent.mkdir(parents=True, exist_ok=True)
            self.shim.write_text(
                "#!/bin/sh\n# make deploy-test: `docker compose` handed to Compose 1.29 (removed at its end).\n"
                'if [ "$1" = docker-cli-plugin-metadata ]; then\n'
                '  echo \'{"SchemaVersion":"0.1.0","Vendor":"jewel-dagster","Version":"1.29",'
                '"ShortDescription":"docker-compose 1.29"}\'\n'
                '  exit 0\nfi\nshift\nexec docker-compose "$@"\n'
            )
            self.shim.chmod(0o755)
            ENV["DOCKER_CONFIG"] = str(config)

    def stop(self) -> None:
        if self.shim is not None:
            shutil.rmtree(self.shim.parent.parent, ignore_errors=True)
        if self.process is not None:
            say("stopping the dockerd this test started")
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def scratch_copy() -> Path:
    """The repo's files (tracked and new, not ignored) in a scratch folder: a clean clone."""
    src = SCRATCH / "src"
    shutil.rmtree(src, ignore_errors=True)
    files = run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO).split()
    for name in files:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    return src


def fill_env(src: Path) -> dict[str, str]:
    """What a user writes into .env after `cp .env.example .env`."""
    values = {
        "GATEWAY_API_KEYS": ",".join(KEYS),
        "GATEWAY_SECRET": secrets.token_hex(32),
        # Characters a URL must quote: the PostgreSQL URL is built from its parts.
        "POSTGRES_PASSWORD": "pg:" + secrets.token_hex(8) + "/@x",
        "REDIS_PASSWORD": secrets.token_hex(16),
        "METRICS_API_KEY": secrets.token_hex(16),
        "WEBHOOK_SECRET": "whsec_" + base64.b64encode(os.urandom(32)).decode(),
        # The test's receiver listens on the compose network's gateway address, a private one.
        "WEBHOOK_ALLOW_PRIVATE": "true",
    }
    path = src / ".env"
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        key = line.split("=", 1)[0]
        out.append(f"{key}={values.pop(key)}" if key in values and "=" in line else line)
    out += [f"{k}={v}" for k, v in values.items()]
    path.write_text("\n".join(out) + "\n")
    return {**dict(v.split("=", 1) for v in out if "=" in v and not v.startswith("#"))}


def run_doc_block(section: str, src: Path, after_cp: Callable[[], None]) -> None:
    for line in doc_commands(REPO / "docs" / "deployment.md", section):
        say(f"$ {line}")
        start = time.monotonic()
        run(line, cwd=src)
        say(f"  ({time.monotonic() - start:.0f} s)")
        if line.strip() == "cp .env.example .env":
            after_cp()


# ---------------------------------------------------------------- containers


def containers() -> list[dict[str, Any]]:
    ids = run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"]).split()
    return json.loads(run(["docker", "inspect", *ids])) if ids else []


def service_of(container: dict[str, Any]) -> str:
    return str(container["Config"]["Labels"]["com.docker.compose.service"])


def of_service(name: str) -> list[dict[str, Any]]:
    return [c for c in containers() if service_of(c) == name]


def all_healthy(services: list[str]) -> bool:
    seen = containers()
    for name in services:
        mine = [c for c in seen if service_of(c) == name]
        if not mine:
            return False
        for c in mine:
            state = c["State"]
            if not state["Running"]:
                return False
            if "Health" in state and state["Health"]["Status"] != "healthy":
                return False
    return True


def wait_healthy(services: list[str]) -> None:
    wait_for(f"{', '.join(services)} healthy", lambda: all_healthy(services), HEALTHY_SECONDS, every=2)


def published(container: dict[str, Any]) -> list[str]:
    ports = container["NetworkSettings"]["Ports"] or {}
    return [f"{b['HostIp']}:{b['HostPort']}->{p}" for p, binds in ports.items() for b in binds or []]


# ---------------------------------------------------------------- requests


def photo_body(**extra: Any) -> dict[str, Any]:
    from tests.support.e2e_flows import CUP, PHOTO

    return {"originalImageBase64": PHOTO, "maskPoints": [CUP], **extra}


def client(key: str = KEYS[0]) -> httpx.Client:
    return httpx.Client(base_url=GATEWAY, timeout=60, headers={"X-API-Key": key})


def start(c: httpx.Client, **extra: Any) -> str:
    answer = c.post("/workflow/start", json=photo_body(**extra))
    assert answer.status_code == 200, answer.text
    return str(answer.json()["workflowId"])


def finished(c: httpx.Client, workflow_id: str) -> dict[str, Any] | None:
    state = c.get(f"/workflow/{workflow_id}").json()
    return state if state.get("status") not in (None, "RUNNING") else None


def completes(c: httpx.Client, workflow_id: str, timeout: float = REQUEST_SECONDS) -> dict[str, Any]:
    state = wait_for(f"{workflow_id} ends", lambda: finished(c, workflow_id), timeout)
    assert state["status"] == "COMPLETED", state
    return state


def result_is_an_image(c: httpx.Client, workflow_id: str) -> None:
    """The result from the host, at the `flux_result_url` the API hands out: compose sets
    RESULT_URL_BASE=gateway (Azurite is not published), so it is the gateway's artifact route."""
    state = c.get(f"/workflow/{workflow_id}").json()
    url = state["result"]["flux_result_url"]
    assert url.startswith(f"/workflow/{workflow_id}/artifacts/flux_generation.png"), url
    answer = c.get(url)
    assert answer.status_code == 200, answer.text[:300]
    image = Image.open(io.BytesIO(answer.content))
    image.load()
    assert image.format == "PNG" and image.size[0] > 100, (image.format, image.size)


def still_there(workflow_id: str, why: str) -> None:
    """The request is still COMPLETED and its result still served. Right after a restart the
    gateway may answer 503 "retry shortly" while its connections come back: retried here."""

    def image(c: httpx.Client) -> bool:
        result_is_an_image(c, workflow_id)
        return True

    with client() as c:
        state = wait_for(f"GET {workflow_id} after {why}", lambda: finished(c, workflow_id), 120, every=2)
        assert state["status"] == "COMPLETED", (why, state)
        wait_for(f"the result of {workflow_id} after {why}", lambda: image(c), 120, every=2)


def graphql(query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = httpx.post(f"{UI}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    data: dict[str, Any] = answer.json()["data"]
    return data


RUNS = """query { runsOrError(limit: 200) { ... on Runs { results { runId status tags { key value } } } } }"""


def runs_by_workflow() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in graphql(RUNS)["runsOrError"]["results"]:
        tags = {t["key"]: t["value"] for t in r["tags"]}
        r["tags"] = tags
        out.setdefault(tags.get("dagster/partition", ""), []).append(r)
    return out


RETRY_TAGS = ("jewel/worker", "dagster/retry_number", "dagster/will_retry", "dagster/parent_run_id")


def runs_told(workflow_id: str) -> str:
    """A request's runs, oldest first, with where they ran and their retry tags: what a failed
    expectation about retries prints (CI once saw a killed worker's request end FAILED)."""
    runs = reversed(runs_by_workflow().get(workflow_id, []))
    return "; ".join(
        f"{r['runId'][:8]} {r['status']} " + " ".join(f"{k}={r['tags'][k]}" for k in RETRY_TAGS if k in r["tags"])
        for r in runs
    )


# ---------------------------------------------------------------- stages


def stage_one_machine(src: Path, env_values: dict[str, str]) -> str:
    run_doc_block("One machine", src, lambda: env_values.update(fill_env(src)))
    wait_healthy(["postgres", "azurite", *OURS])
    by_service = {service_of(c): c for c in containers()}

    for name in OURS:  # not root; only the variables it needs
        box = by_service[name]
        assert box["Config"]["User"] not in ("", "0", "root"), (name, box["Config"]["User"])
        env = dict(e.split("=", 1) for e in box["Config"]["Env"])
        assert "GATEWAY_API_KEYS" not in env or name == "gateway", name
        assert "GATEWAY_SECRET" not in env or name == "gateway", name
        assert "METRICS_API_KEY" not in env or name == "gateway", name
    assert run(["docker", "exec", by_service["gateway"]["Id"], "id", "-u"]).strip() != "0"
    ref_env = " ".join(by_service["reference-server"]["Config"]["Env"])
    assert "PASSWORD" not in ref_env and "AZURE" not in ref_env, ref_env
    for name in UNPUBLISHED + ["azurite"]:
        assert not published(by_service[name]), (name, published(by_service[name]))
    ui_published = published(by_service["webserver"])
    assert ui_published == [f"127.0.0.1:{UI_PORT}->3000/tcp"], ui_published
    assert httpx.get(f"{UI}/server_info", timeout=10).status_code == 200
    assert httpx.get(f"{GATEWAY}/docs", timeout=10).status_code == 404, "/docs is off in compose"
    assert httpx.get(f"{GATEWAY}/openapi.json", timeout=10).status_code == 404

    with client() as c:
        assert httpx.post(f"{GATEWAY}/workflow/start", json={}, timeout=30).status_code == 401
        began = time.monotonic()
        workflow_id = start(c)
        state = completes(c, workflow_id)
        say(f"one request COMPLETED in {time.monotonic() - began:.1f} s through the published gateway")
        Image.open(io.BytesIO(base64.b64decode(state["result"]["flux_result_base64"]))).load()
        result_is_an_image(c, workflow_id)

    for name in ["postgres", "azurite", *OURS]:
        began = time.monotonic()
        run(["docker", "compose", "restart", name], cwd=src)
        wait_healthy(["postgres", "azurite", *OURS])
        still_there(workflow_id, f"restart of {name}")
        say(f"restart of {name}: request kept ({time.monotonic() - began:.0f} s)")
    with client() as c:
        completes(c, start(c))  # and the restarted stack still serves new requests

    run(["docker", "compose", "down"], cwd=src)
    run(["docker", "compose", "up", "-d"], cwd=src)
    wait_healthy(["postgres", "azurite", *OURS])
    still_there(workflow_id, "down and up")
    say("down + up: request kept")
    return workflow_id


def stage_observability(src: Path, env_values: dict[str, str]) -> None:
    # Grafana has no stand-in here (not packaged by Debian): Prometheus alone.
    run(["docker", "compose", "--profile", "observability", "up", "-d", "prometheus"], cwd=src)

    def scraped() -> bool:
        targets = httpx.get(f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/targets", timeout=10).json()["data"][
            "activeTargets"
        ]
        if not targets or targets[0]["health"] != "up":
            return False
        query = httpx.get(
            f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query",
            params={"query": 'count({job="jewel-gateway"})'},
            timeout=10,
        ).json()
        return bool(query["data"]["result"]) and int(query["data"]["result"][0]["value"][1]) > 10

    wait_for("Prometheus scrapes the gateway", scraped, 120, every=3)
    run(["docker", "compose", "--profile", "observability", "rm", "-sf", "prometheus"], cwd=src)


@contextmanager
def webhook_receiver(host: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                received.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()


def stage_scale_out(src: Path, env_values: dict[str, str]) -> None:
    run_doc_block("Scale-out", src, lambda: None)
    wait_healthy(["postgres", "azurite", "redis", *OURS, "worker", "lb"])
    workers = of_service("worker")
    gateways = of_service("gateway")
    assert len(workers) == 2 and len(gateways) == 2, (len(workers), len(gateways))
    assert all(not published(g) or all(p.startswith("127.0.0.1:") for p in published(g)) for g in gateways)
    concurrency = int(env_values.get("CELERY_CONCURRENCY") or "2")
    config = run(
        [
            "docker",
            "compose",
            "-f",
            "docker-compose.yml",
            "-f",
            "docker-compose.scaleout.yml",
            "exec",
            "-T",
            "daemon",
            "cat",
            "/opt/dagster/home/dagster.yaml",
        ],
        cwd=src,
    )
    import yaml

    instance = yaml.safe_load(config)
    slots = instance["concurrency"]["runs"]["max_concurrent_runs"]
    assert slots == 2 * concurrency, f"run slots {slots}, not 2 workers x {concurrency}"
    assert instance["run_launcher"]["class"] == "JewelCeleryRunLauncher", instance["run_launcher"]
    say(f"run slots follow the workers: {slots} = 2 x {concurrency}")

    network = json.loads(run(["docker", "network", "inspect", f"{PROJECT}_default"]))[0]
    host_ip = network["IPAM"]["Config"][0]["Gateway"]
    with webhook_receiver(host_ip) as (hook, received):
        began = time.monotonic()
        clients = [client(key) for key in KEYS]
        ids = [start(clients[i % 2], webhookUrl=hook) for i in range(20)]
        for i, workflow_id in enumerate(ids):
            completes(clients[i % 2], workflow_id, timeout=3 * REQUEST_SECONDS)
        say(f"20 requests COMPLETED through the balancer in {time.monotonic() - began:.0f} s")
        wait_for("a webhook for each request", lambda: {r.get("workflowId") for r in received} >= set(ids), 120)
        # Not a synchronisation: a window in which a second delivery, if any, would arrive.
        time.sleep(3)
        counts = Counter(r.get("workflowId") for r in received)
        assert all(counts[i] == 1 for i in ids), {i: counts[i] for i in ids if counts[i] != 1}
        on = Counter(runs_by_workflow()[i][0]["tags"].get("jewel/worker") for i in ids)
        assert len(on) == 2 and None not in on, on
        say(f"runs per worker: {dict(on)}; each webhook once")
        served = [run(["docker", "logs", g["Id"]]).count("/workflow/start") for g in gateways]
        say(f"starts logged per gateway replica: {served}")

        # The runs' JSON log lines: one line per event at its own level, not wrapped as WARNING.
        logs = "".join(run(["docker", "logs", w["Id"]]) for w in workers)
        events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        assert events and {e.get("level") for e in events} - {"WARNING"}, logs[-2000:]
        assert not [line for line in logs.splitlines() if "WARNING/ForkPoolWorker" in line and "{" in line]

        # A worker killed mid-run: the run completes on the other.
        ids = [start(clients[i % 2]) for i in range(2)]

        def a_run_on_a_worker() -> tuple[str, str] | None:
            for workflow_id in ids:
                for r in runs_by_workflow().get(workflow_id, []):
                    if r["status"] == "STARTED" and r["tags"].get("jewel/worker"):
                        return workflow_id, r["tags"]["jewel/worker"]
            return None

        workflow_id, worker = wait_for("a run started on a worker", a_run_on_a_worker, 120, every=0.5)
        victim = next(w for w in workers if worker.endswith("@" + w["Config"]["Hostname"]))
        killed = time.monotonic()
        run(["docker", "kill", victim["Id"]])
        try:
            completes(clients[ids.index(workflow_id) % 2], workflow_id, timeout=KILLED_RUN_BOUND_SECONDS)
        except AssertionError as failure:
            raise AssertionError(f"{failure}; its runs: {runs_told(workflow_id)}") from failure
        took = time.monotonic() - killed
        finals = [r for r in runs_by_workflow()[workflow_id] if r["status"] == "SUCCESS"]
        assert finals and finals[0]["tags"]["jewel/worker"] != worker, (worker, finals)
        say(f"worker {worker} killed mid-run: the request COMPLETED on the other {took:.0f} s later")
        for i, other in enumerate(ids):
            completes(clients[i % 2], other, timeout=KILLED_RUN_BOUND_SECONDS)
        for each in clients:
            each.close()


def cleanup(src: Path | None) -> None:
    """Remove the test's containers, networks and volumes: through compose when it can read the
    files (it refuses before `.env` exists: required variables), then by the project's label, so
    what an interrupted earlier run left (a killed test, a stopped engine) goes too."""
    if src is not None and (src / ".env").exists():
        run(
            "docker compose -f docker-compose.yml -f docker-compose.scaleout.yml --profile observability "
            "down -v --remove-orphans -t 5",
            cwd=src,
            check=False,
        )
    label = f"label=com.docker.compose.project={PROJECT}"
    for kind, remove in (
        ("container", ["rm", "-f", "-v"]),
        ("network", ["network", "rm"]),
        ("volume", ["volume", "rm", "-f"]),
    ):
        listing = ["ps", "-aq"] if kind == "container" else [kind, "ls", "-q"]
        ids = run(["docker", *listing, "--filter", label], check=False).split()
        if ids:
            run(["docker", *remove, *ids], check=False)


def stop_on_signals() -> None:
    """SIGTERM (a CI timeout) and SIGINT end the test through its `finally`: containers, volumes
    and the engine it started are removed even then. SIGINT is ignored by default in a process
    started in the background by a shell, hence set here too."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def main() -> int:
    stop_on_signals()
    engine = Engine()
    src: Path | None = None
    timings: list[tuple[str, float]] = []
    status = 1
    try:
        began = time.monotonic()
        engine.start()
        run([str(REPO / "deploy" / "standins" / "build.sh")], timeout=3600)
        timings.append(("engine and stand-ins", time.monotonic() - began))
        src = scratch_copy()
        cleanup(src)  # what an interrupted earlier run left
        use_free_ports()
        env_values: dict[str, str] = {}
        stages: list[tuple[str, Callable[[Path, dict[str, str]], Any]]] = [
            ("1 one machine (build included)", stage_one_machine),
            ("3 observability", stage_observability),
            ("2 scale-out", stage_scale_out),
        ]
        for name, stage in stages:
            began = time.monotonic()
            say(f"stage {name}")
            stage(src, env_values)
            timings.append((name, time.monotonic() - began))
            say(f"stage {name}: passed in {timings[-1][1]:.0f} s")
        size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", "jewel-dagster:latest"]).strip())
        say(f"image jewel-dagster:latest: {size / 1e6:.0f} MB")
        status = 0
    except Exception as exc:  # noqa: BLE001 (reported, then cleaned up)
        say(f"FAILED: {exc}")
        if src is not None:
            say(
                "last logs:\n"
                + run(
                    "docker compose -f docker-compose.yml -f docker-compose.scaleout.yml logs --tail 30",
                    cwd=src,
                    check=False,
                )[-6000:]
            )
    finally:
        began = time.monotonic()
        cleanup(src)
        engine.stop()
        shutil.rmtree(SCRATCH, ignore_errors=True)  # the copy, and its .env with the run's secrets
        timings.append(("clean-up", time.monotonic() - began))
        for name, seconds in timings:
            say(f"{name:32s} {seconds:7.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
