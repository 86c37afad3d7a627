"""Starts and stops the three processes of the embedded default: `python -m devtools.stack`.

dagster-webserver (UI and GraphQL, port 3000), dagster-daemon (run queue, schedules,
sensors) and the gateway (port 8001). Each runs in its own process group so that stopping
the stack also stops the code servers and run workers they spawned. The end-to-end tests
use the same class, so what they test is what `make run` starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Protocol

import httpx
import yaml
from dotenv import dotenv_values

from devtools.instance_config import CELERY_OVERLAY, uses_celery, write_instance_config
from devtools.instance_config import per_caller as per_caller  # tests import it from here

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _wait_until(ready: Callable[[], bool], what: str, timeout: float, process: subprocess.Popen[bytes] | None) -> None:
    """Poll ``ready`` until it holds, the deadline passes, or the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before {what}")
        if ready():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")


def wait_for_http(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200, the deadline passes, or the process exits.

    One client for the whole wait: `httpx.get` makes a client per call, and with it a TLS context
    (the CA bundle loaded and parsed, ~30 ms of CPU, for a plain-HTTP poll); polled every 0.1 s,
    that was ~0.3 s of a core per second of waiting (1.5 ms a poll now, 2026-12-05)."""
    with httpx.Client(timeout=1.0) as client:

        def answers() -> bool:
            try:
                return client.get(url).status_code == 200
            except httpx.TransportError:
                return False

        _wait_until(answers, f"{url} answered", timeout, process)


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until something accepts TCP connections on ``host:port`` (a gRPC server, say)."""

    def listens() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            return False

    _wait_until(listens, f"{host}:{port} listened", timeout, process)


_WORKSPACE = """
{ workspaceOrError { ... on Workspace { locationEntries {
    loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def _location_state(client: httpx.Client, dagster_url: str) -> str:
    """ "loaded", "loading" or "error: <message>" for the workspace's code location."""
    try:
        body = client.post(f"{dagster_url}/graphql", json={"query": _WORKSPACE}, timeout=5).json()
        entries = body["data"]["workspaceOrError"]["locationEntries"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return "loading"
    if not entries:
        return "loading"
    entry = entries[0]
    loaded = entry.get("locationOrLoadError") or {}
    if loaded.get("__typename") == "PythonError":
        return f"error: {loaded.get('message', '')[:500]}"
    if entry.get("loadStatus") == "LOADED" and loaded.get("__typename") == "RepositoryLocation":
        return "loaded"
    return "loading"


class Spawner(Protocol):
    """What starts a stack's process: `subprocess.Popen` itself, or a stand-in that takes the same
    arguments (the tests' warm interpreter, tests/support/warm_interpreter.py)."""

    def __call__(
        self,
        args: list[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        stdout: IO[bytes] | None,
        stderr: int | None,
        start_new_session: bool,
    ) -> subprocess.Popen[bytes]: ...


class Stack:
    def __init__(
        self,
        env: Mapping[str, str],
        dagster_port: int = 3000,
        gateway_port: int = 8001,
        log_dir: Path | None = None,
        host: str = "127.0.0.1",
        spawner: Spawner = subprocess.Popen,
    ) -> None:
        if "DAGSTER_HOME" not in env:
            raise ValueError("DAGSTER_HOME must be set: it holds dagster.yaml and the run storage")
        self.env = {
            **env,
            # The gateway shares DAGSTER_HOME here: it reads run status from the storage.
            "STATUS_SOURCE": env.get("STATUS_SOURCE") or "storage",
            "DAGSTER_PORT": str(dagster_port),
            "DAGSTER_HOST": host,
            "API_PORT": str(gateway_port),
            "BIND_HOST": host,
        }
        self.host = host
        self.dagster_port = dagster_port
        self.gateway_port = gateway_port
        self.log_dir = log_dir
        self.spawner = spawner
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.code_server_port: int | None = None

    @property
    def dagster_url(self) -> str:
        return f"http://{self.host}:{self.dagster_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    def _spawn(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> None:
        out = open(self.log_dir / f"{name}.log", "ab") if self.log_dir else None  # noqa: SIM115
        self.processes[name] = self.spawner(
            args,
            # Not the repo: Dagster's CLI loads a `.env` from its working folder over the
            # environment it was given (a relative DAGSTER_HOME there stopped it). The environment
            # built here already holds what `.env` says.
            cwd=self.env["DAGSTER_HOME"],
            env={**self.env, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )

    def start_dagster(self, timeout: float = 120.0) -> None:
        self.start_code_server(timeout)
        self._spawn_webserver()
        self.start_daemon()
        self.wait_for_dagster(timeout)

    def start_webserver(self, timeout: float = 120.0) -> None:
        """(Re)start dagster-webserver alone and wait until its code location is loaded."""
        self._spawn_webserver()
        self.wait_for_dagster(timeout)

    def _spawn_webserver(self) -> None:
        args = [str(BIN / "dagster-webserver"), "-w", self._workspace(), "-h", self.host, "-p", str(self.dagster_port)]
        self._spawn("webserver", args)

    def start_daemon(self) -> None:
        """(Re)start dagster-daemon; it picks up the queue and run monitoring where they were."""
        # dagster-daemon with the run queue woken by submits (jewel_dagster/runtime/processes/queue_daemon.py).
        daemon = [sys.executable, "-m", "jewel_dagster.runtime.processes.queue_daemon"]
        self._spawn("daemon", [*daemon, "run", "-w", self._workspace()])

    def wait_for_dagster(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wait_for_http(f"{self.dagster_url}/server_info", timeout, self.processes["webserver"])
        # The webserver answers before its code location is loaded; a launch then finds no
        # partitions definition. Wait until the location is loaded (or say why it is not).
        with httpx.Client() as client:  # one for the wait (wait_for_http says why)
            while True:
                state = _location_state(client, self.dagster_url)
                if state == "loaded":
                    return
                if state.startswith("error"):
                    raise RuntimeError(f"the code location failed to load: {state}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the code location did not load within {timeout:.0f} s ({state})")
                time.sleep(0.2)

    @property
    def celery(self) -> bool:
        """RUN_LAUNCHER=celery: runs go to Celery workers (dagster.celery.yaml), not the code server."""
        return uses_celery(self.env)

    @property
    def managed_code_servers(self) -> bool:
        """CODE_SERVER=managed: the stock path, where the webserver and daemon each spawn a code
        server of their own from workspace.yaml. A `kill -9` of those is never repaired by the
        webserver (it respawns its code server only on a reload), so every other stack, the
        scale-out one with Celery included, runs one code server the supervisor restarts on the
        same address, as docker-compose does: both reconnect by themselves (Dagster watches a
        `grpc_server` location and reloads it when its server id changes)."""
        return (self.env.get("CODE_SERVER") or "warm") == "managed"

    def _workspace(self) -> str:
        """The workspace file the webserver and daemon load: our code server's address, or
        (CODE_SERVER=managed) the module, for them to spawn code servers of their own."""
        if self.managed_code_servers:
            return str(REPO_ROOT / "workspace.yaml")
        workspace = Path(self.env["DAGSTER_HOME"]) / "workspace.yaml"
        entry = {"host": self.host, "port": self.code_server_port, "location_name": "jewel_dagster"}
        # Written whole or not at all: a daemon restarted a moment before the webserver reads the
        # file while the webserver's start rewrites it (an empty file failed the daemon's start).
        written = workspace.with_name(f".{workspace.name}.{os.getpid()}.{threading.get_ident()}")
        written.write_text(yaml.safe_dump({"load_from": [{"grpc_server": entry}]}))
        os.replace(written, workspace)
        return str(workspace)

    def start_code_server(self, timeout: float = 120.0) -> None:
        """(Re)start our warm code server, on the port it had before if it ran already: the
        webserver and daemon reconnect to the same address. With Celery it runs no runs (the
        workers do); it serves the code location to the webserver and daemon."""
        if self.managed_code_servers or "code_server" in self.processes:
            return
        self.code_server_port = self.code_server_port or free_port()
        self._spawn(
            "code_server",
            [sys.executable, "-m", "jewel_dagster.runtime.processes.warm_code_server",
             "-m", "jewel_dagster.definitions",
             "--location-name", "jewel_dagster", "-h", self.host, "-p", str(self.code_server_port)],
        )  # fmt: skip
        wait_for_port(self.host, self.code_server_port, timeout, self.processes["code_server"])

    def start_gateway(
        self,
        timeout: float = 60.0,
        name: str = "gateway",
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """A gateway process (another replica when given another ``name`` and ``port``, settings of
        its own in ``env``); its URL. `python -m gateway` listens on API_PORT and BIND_HOST, as a
        deployment's would."""
        url = self._spawn_gateway(name, port, env)
        self.wait_for_gateway(url, name, timeout)
        return url

    def _spawn_gateway(
        self, name: str = "gateway", port: int | None = None, env: Mapping[str, str] | None = None
    ) -> str:
        port = port or self.gateway_port
        self._spawn(
            name, [sys.executable, "-m", "gateway", "--log-level", "warning"], {**(env or {}), "API_PORT": str(port)}
        )
        return f"http://{self.host}:{port}"

    def wait_for_gateway(self, url: str, name: str = "gateway", timeout: float = 60.0) -> None:
        wait_for_http(f"{url}/health", timeout, self.processes[name])

    def start_workers(self, count: int, concurrency: int = 2, timeout: float = 120.0) -> None:
        """``count`` Celery workers (`worker0`, ...; Celery names `w0@host`, ...), each running
        ``concurrency`` runs at once; returns once every one answers a ping. Started after the
        webserver, which made the instance: fresh instances made at once by several processes
        can collide on schema migrations."""
        first = sum(1 for n in self.processes if n.startswith("worker"))
        names = [self.spawn_worker(index, concurrency) for index in range(first, first + count)]
        self._wait_for_workers(names, timeout)

    def spawn_worker(self, index: int, concurrency: int = 2) -> str:
        """Start Celery worker `worker<index>` (Celery name `w<index>@host`, returned) without
        waiting for it: a supervisor restarting the one worker that died (benchmarks/soak)."""
        name = f"w{index}@{socket.gethostname()}"
        self._spawn(
            f"worker{index}",
            [sys.executable, "-m", "celery", "-A", "jewel_dagster.runtime.processes.celery_worker", "worker",
             "-Q", self.env.get("CELERY_QUEUE", "dagster"), "-n", name, "--concurrency", str(concurrency),
             "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle", "--loglevel", "WARNING"],
        )  # fmt: skip
        return name

    def _wait_for_workers(self, names: list[str], timeout: float) -> None:
        from celery import Celery
        from kombu.exceptions import OperationalError
        from redis.exceptions import ConnectionError as RedisConnectionError

        app = Celery(broker=self.env["CELERY_BROKER_URL"])
        workers = [p for n, p in self.processes.items() if n.startswith("worker")]
        try:

            def all_answer() -> bool:
                for process in workers:
                    if process.poll() is not None:
                        raise RuntimeError(f"a Celery worker exited with {process.returncode}")
                try:
                    replies = app.control.ping(destination=names, timeout=1.0) or []
                except (OperationalError, RedisConnectionError, OSError):
                    # A broker restarted a moment ago (the soak's chaos): its old connection is
                    # closed on the first use ("Connection closed by server"); ask again.
                    return False
                return {h for reply in replies for h in reply} >= set(names)

            _wait_until(all_answer, f"Celery workers {names} answered", timeout, None)
        finally:
            app.close()

    def start(self) -> None:
        """Every process; the gateway (~2 CPU-s of imports, 4-8 s of wall time on a busy machine)
        starts beside Dagster's processes instead of after them: it needs only the instance's
        files, which exist before any process starts, unless the storage is PostgreSQL, whose
        first process creates the schema (two at once can collide on its migrations), so there
        the gateway waits for the webserver as before. A new SQLite home gets its storages
        created before any process starts (`copy_migrated_sqlite`): four processes finding
        empty files at once race to create the same tables ("table alembic_version already
        exists" stopped `make run`'s gateway on a fresh machine)."""
        early = not self.env.get("DAGSTER_PG_URL")
        if early:
            copy_migrated_sqlite(Path(self.env["DAGSTER_HOME"]))
        url = self._spawn_gateway() if early else None
        self.start_dagster()
        if self.celery:
            self.start_workers(int(self.env.get("CELERY_WORKERS", "2")), int(self.env.get("CELERY_CONCURRENCY", "2")))
        if url is None:
            self.start_gateway()
        else:
            self.wait_for_gateway(url)

    def stop(self, names: tuple[str, ...] | None = None, grace: float = 10.0) -> None:
        """SIGTERM each process group, then SIGKILL what is still alive after ``grace``."""
        chosen = [n for n in (names or tuple(self.processes)) if n in self.processes]
        for name in chosen:
            _signal_group(self.processes[name], signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name in chosen:
            process = self.processes.pop(name)
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # The group may hold children (code server, run workers) even after the leader exits.
            _signal_group(process, signal.SIGKILL)
            process.wait()

    def kill(self, name: str) -> None:
        """SIGKILL a process group at once (a crash, an OOM kill): nothing of it gets to clean up."""
        process = self.processes.pop(name)
        _signal_group(process, signal.SIGKILL)
        process.wait()

    def stop_dagster(self) -> None:
        self.stop(("webserver", "daemon", "code_server", *(n for n in self.processes if n.startswith("worker"))))


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def parent_pid(pid: int) -> int:
    """The parent of a process (0 when it is gone), from /proc."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def descendants(roots: list[int]) -> list[int]:
    """Every process below ``roots`` (children, their children, ...): run workers, code servers."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            children.setdefault(parent_pid(int(entry)), []).append(int(entry))
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def temporary_stack(
    root: Path, extra_env: Mapping[str, str] | None = None, spawner: Spawner = subprocess.Popen
) -> Iterator[Stack]:
    """The whole stack on free loopback ports with its state under ``root``; for tests and benchmarks."""
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(root / "dagster_home"),
        "LOCAL_BLOB_ROOT": str(root / "blobs"),
        **(extra_env or {}),
    }
    if env.get("GATEWAY_API_KEYS"):
        env.setdefault("GATEWAY_SECRET", "a-test-stack-secret-" + root.name)
    else:
        env.setdefault("ALLOW_ANONYMOUS", "true")  # loopback only, and gone with the test
    prepare_dagster_home(env)
    stack = Stack(env, dagster_port=free_port(), gateway_port=free_port(), log_dir=logs, spawner=spawner)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


# The SQLite files of a DAGSTER_HOME (run storage, event log index, schedules) and where a
# migrated set is kept per Dagster version, for `copy_migrated_sqlite`.
_SQLITE_FILES = ("history/runs.db", "history/runs/index.db", "schedules/schedules.db")
_SQLITE_TEMPLATES = REPO_ROOT / ".data" / "dagster_home_templates"


def copy_migrated_sqlite(home: Path) -> None:
    """Give a new SQLite DAGSTER_HOME storages whose schemas are already created and stamped.

    Each of a stack's four processes would otherwise find empty files at its start and race to
    create ~30 tables and indexes (hundreds of small fsynced writes, ~1 CPU-s and several
    seconds of wall time on a busy disk); tests and benchmarks start a stack each. The set is
    made once per Dagster version, under .data, and copied: a schema is a function of the
    Dagster version only. A home that already has its files keeps them.
    """
    if any((home / name).exists() for name in _SQLITE_FILES):
        return
    template = _SQLITE_TEMPLATES / _dagster_version()
    if not all((template / name).exists() for name in _SQLITE_FILES):
        _make_sqlite_template(template)
    for name in _SQLITE_FILES:
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template / name, home / name)


def _dagster_version() -> str:
    from importlib.metadata import version

    return version("dagster")


def _make_sqlite_template(template: Path) -> None:
    """Create the storages in a folder of our own, then move it in place whole (another
    process making the same template at once loses the rename race, harmlessly)."""
    from dagster import DagsterInstance

    template.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{template.name}.", dir=template.parent))
    try:
        env = {"DAGSTER_HOME": str(building)}
        prepare_dagster_home(env)
        with DagsterInstance.from_config(str(building)) as instance:
            instance.get_runs(limit=1)
            instance.all_instigator_state()
            instance.event_log_storage.get_asset_records()
        for name in _SQLITE_FILES:
            if not (building / name).exists():
                raise RuntimeError(f"Dagster did not create {name}: the template would be incomplete")
        try:
            os.rename(building, template)
        except OSError:
            if not template.exists():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)


SAMPLE_CURL = """\
Try one request (the sample is a ring photo that ships with the repo):

  IMG=$(base64 -w0 samples/ring.jpg)
  curl -s -X POST {gw}/workflow/start -H 'Content-Type: application/json' \\
    -d '{{"originalImageBase64": "'$IMG'", "maskPoints": [{{"x": 0.5, "y": 0.32, "label": 1}}]}}'
  curl -s {gw}/workflow/<workflowId> | head -c 300
"""


def prepare_dagster_home(env: dict[str, str]) -> None:
    """Write $DAGSTER_HOME/dagster.yaml: SQLite by default, PostgreSQL when DAGSTER_PG_* says so,
    Celery's launcher with RUN_LAUNCHER=celery (devtools.instance_config, which the image's
    containers run too). Fills DAGSTER_PG_URL from DAGSTER_PG_HOST/PORT/USERNAME/PASSWORD/DB."""
    write_instance_config(env)


def celery_overlay() -> dict[str, object]:
    """dagster.celery.yaml: the top-level blocks that replace the base's for scale-out."""
    overlay: dict[str, object] = yaml.safe_load((REPO_ROOT / CELERY_OVERLAY).read_text())
    return overlay


def make_run_environment(shell: Mapping[str, str], dotenv_path: Path) -> dict[str, str]:
    """What `make run` gives its processes: the shell's variables, then `.env` for the rest.

    Empty values in `.env` mean unset (as for the settings classes), and the folders it names
    relative to the repo become absolute: every process starts elsewhere, and Dagster refuses a
    relative DAGSTER_HOME.
    """
    dotenv = {k: v for k, v in dotenv_values(dotenv_path).items() if v} if dotenv_path.exists() else {}
    env = {**dotenv, **shell}
    env.setdefault("DAGSTER_HOME", ".data/dagster_home")
    for folder in ("DAGSTER_HOME", "LOCAL_BLOB_ROOT"):
        if env.get(folder):
            env[folder] = str((REPO_ROOT / env[folder]).resolve())
    return env


def main() -> None:
    env = make_run_environment(os.environ, REPO_ROOT / ".env")
    if not env.get("GATEWAY_API_KEYS") and env.get("BIND_HOST", "127.0.0.1") in ("127.0.0.1", "localhost", "::1"):
        # The embedded default listens on loopback only, for the person at the machine; bound
        # anywhere else, the gateway asks for keys (or an explicit ALLOW_ANONYMOUS=true).
        env.setdefault("ALLOW_ANONYMOUS", "true")
    prepare_dagster_home(env)
    stack = Stack(
        env,
        dagster_port=int(env.get("DAGSTER_PORT", "3000")),
        gateway_port=int(env.get("API_PORT", "8001")),
        host=env.get("BIND_HOST", "127.0.0.1"),
    )
    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        stack.start()
        sys.stderr.write(
            f"\nDagster UI: {stack.dagster_url}   gateway: {stack.gateway_url}   (Ctrl-C stops all three)\n\n"
            + SAMPLE_CURL.format(gw=stack.gateway_url)
        )
        while not stopping:
            dead = [n for n, p in stack.processes.items() if p.poll() is not None]
            if dead:
                sys.stderr.write(f"{', '.join(dead)} exited; stopping the stack\n")
                break
            time.sleep(0.5)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
