"""The soak's stack: PostgreSQL and Redis of its own, Azurite, the reference model server, a webhook
receiver, and the scale-out processes (2 gateways, webserver, daemon, code server, 2 Celery workers).

PostgreSQL and Redis run from a temporary folder on ports of their own, so pausing or restarting
them (chaos.py) touches nothing else on the machine. Each backing service runs in a process
group of its own: a pause stops PostgreSQL's postmaster and every backend at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from devtools.reference_server import service_env
from devtools.stack import REPO_ROOT, Stack, free_port, temporary_stack, wait_for_http, wait_for_port
from tests.support.infra import azurite
from tests.support.receivers import Receiver, webhook_receiver

# The reference latencies of the issue: SAM3 1 s, the A100 generation 3 s, Gemini 2 s.
LATENCY = {"sam3/segment": 1.0, "a100/generate": 3.0, "gemini/generate-content": 2.0}
WEBHOOK_SECRET = "soak-webhook-secret"
GATEWAYS = ("gateway", "gateway2")
PG_BIN = Path("/usr/lib/postgresql")


def _pg_program(name: str) -> str:
    """initdb / postgres: on the PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(PG_BIN.glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not versions:
        raise SystemExit(f"{name} not found: apt-get install postgresql")
    return str(versions[-1] / name)


def _as_postgres() -> dict[str, object]:
    """PostgreSQL refuses to run as root: run it as the `postgres` user when we are root."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


@dataclass
class Service:
    """A backing service (PostgreSQL or Redis) the soak owns: its command, port and process."""

    name: str
    args: list[str]
    port: int
    log: Path
    as_user: dict[str, object] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 (our own argument list)
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self.as_user,  # type: ignore[call-overload]
            )
        wait_for_port("127.0.0.1", self.port, timeout, self.process)

    def signal_group(self, sig: signal.Signals) -> None:
        if self.process is not None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Stop the whole group (SIGCONT first: a paused server cannot exit)."""
        if self.process is None:
            return
        self.signal_group(sig)
        self.signal_group(signal.SIGCONT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.process.wait()
        self.signal_group(signal.SIGKILL)  # backends left behind by a killed postmaster
        self.process = None


def own_postgres(root: Path) -> Service:
    data = root / "pgdata"
    data.mkdir(parents=True)
    as_user = _as_postgres()
    if as_user:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(data, "postgres", "postgres")
    subprocess.run(  # noqa: S603
        [_pg_program("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
        check=True,
        stdout=subprocess.DEVNULL,
        **as_user,  # type: ignore[call-overload]
    )
    port = free_port()
    # fsync off: a soak measures the system's behaviour under faults, not the disk.
    args = [_pg_program("postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=300"]  # fmt: skip
    return Service("postgres", args, port, root / "postgres.log", as_user)


def own_redis(root: Path) -> Service:
    port = free_port()
    # An append-only file, as a broker's Redis keeps: a restart loses nothing it acknowledged.
    args = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "yes",
            "--dir", str(root)]  # fmt: skip
    return Service("redis", args, port, root / "redis.log")


@contextmanager
def reference_models(failure_rate: float, seed: int) -> Iterator[str]:
    """The reference model server with the issue's latencies and a random 503 share per call."""
    port = free_port()
    latency = [a for endpoint, s in LATENCY.items() for a in ("--latency", f"{endpoint}={s}")]
    args = [sys.executable, "-m", "devtools.reference_server", "--port", str(port), "--instant",
            "--failure-rate", str(failure_rate), "--seed", str(seed), *latency]  # fmt: skip
    process = subprocess.Popen(args, cwd=REPO_ROOT)  # noqa: S603
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/sam3/health", 60, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class SoakStack:
    stack: Stack
    postgres: Service
    redis: Service
    receiver: Receiver
    gateway_ports: dict[str, int]
    pg_url: str

    def gateway_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.gateway_ports[name]}"

    @property
    def dagster_home(self) -> str:
        return self.stack.env["DAGSTER_HOME"]


@contextmanager
def soak_stack(root: Path, failure_rate: float, seed: int) -> Iterator[SoakStack]:
    """Everything up, in order; everything stopped at the end, whatever happened."""
    with ExitStack() as exits:
        postgres, redis = own_postgres(root / "pg"), own_redis(root / "redis-data")
        (root / "redis-data").mkdir(parents=True, exist_ok=True)
        postgres.start()
        exits.callback(postgres.stop)
        redis.start()
        exits.callback(redis.stop)
        pg_url = f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres"
        connection = exits.enter_context(azurite(root / "azurite"))
        models = exits.enter_context(reference_models(failure_rate, seed))
        receiver = exits.enter_context(webhook_receiver())
        broker = f"redis://127.0.0.1:{redis.port}"
        env = {
            **service_env(models),
            "GEMINI_API_KEY": "reference-server",
            "GEMINI_BASE_URL": f"{models}/gemini",
            "DAGSTER_PG_URL": pg_url,
            "AZURE_STORAGE_CONNECTION_STRING": connection,
            "RUN_LAUNCHER": "celery",
            "CELERY_BROKER_URL": f"{broker}/0",
            "CELERY_RESULT_BACKEND": f"{broker}/1",
            "REDIS_URL": f"{broker}/2",
            "CELERY_WORKERS": "2",
            "CELERY_CONCURRENCY": "2",
            "RATE_LIMIT_PER_MINUTE": "1000000",
            "REGENERATION_SENSOR_ENABLED": "false",
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver listens on loopback
        }
        started = time.monotonic()
        stack = exits.enter_context(temporary_stack(root / "stack", env))
        port2 = free_port()
        stack.start_gateway(name="gateway2", port=port2)
        print(f"soak: stack up in {time.monotonic() - started:.0f} s under {root}", flush=True)
        yield SoakStack(stack, postgres, redis, receiver, {"gateway": stack.gateway_port, "gateway2": port2}, pg_url)
