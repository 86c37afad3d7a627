"""The chaos: every K seconds one fault, and what it killed restarted after a random 0-20 s, as a
supervisor would. Each fault is recorded with when it hit and when its target was back.

Faults: `kill -9` a Celery worker (its process group: the pool children die with it), the code
server (the one the webserver and daemon load the code location from, as in docker-compose;
restarted on its address like the others), the daemon, the webserver or one gateway; restart
Redis; pause PostgreSQL for 10 s (SIGSTOP and SIGCONT of its whole process group).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.soak.stack import GATEWAYS, SoakStack
from devtools.stack import descendants

KINDS = ("worker", "code_server", "daemon", "webserver", "gateway", "redis", "postgres_pause")
PG_PAUSE_SECONDS = 10.0
MAX_RESTART_DELAY = 20.0
RESTART_TIMEOUT = 240.0  # a process start took 50-100 s at load 40-80 on the shared 2 cores


@dataclass
class Fault:
    kind: str
    target: str
    at: float  # time.time() of the fault
    back: float | None = None  # time.time() its target answered again (None: never)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _managed_code_servers(soak: SoakStack) -> list[int]:
    """The `dagster api grpc` processes the webserver and daemon spawned (CODE_SERVER=managed)."""
    roots = [p.pid for n, p in soak.stack.processes.items() if n in ("webserver", "daemon")]
    found = []
    for pid in descendants(roots):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b" api grpc" in cmdline:
            found.append(pid)
    return found


class Chaos:
    """Runs the faults on a thread of its own until `stop`; `faults` is what happened."""

    def __init__(self, soak: SoakStack, every: float, seed: int, kinds: tuple[str, ...] = KINDS) -> None:
        self.soak, self.every, self.kinds = soak, every, kinds
        self.rng = random.Random(seed)
        self.faults: list[Fault] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # the stack's process table: faults vs the final stop
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """No new fault; the one under way finishes its restart first."""
        self.stopping.set()
        self.thread.join(timeout=180)

    def down_windows(self, name: str) -> list[tuple[float, float]]:
        """(from, to) time.time() windows in which gateway ``name`` was down."""
        now = time.time()
        return [(f.at, f.back or now) for f in self.faults if f.kind == "gateway" and f.target == name]

    def _run(self) -> None:
        while not self.stopping.wait(self.every):
            self.restart_crashed()
            kind = self.rng.choice(self.kinds)
            fault = Fault(kind, "", time.time())
            try:
                getattr(self, f"_{kind}")(fault)
            except Exception as exc:  # noqa: BLE001 (a restart that fails is a finding, not a crash)
                fault.error = f"{type(exc).__name__}: {exc}"[:500]
            self.faults.append(fault)
            took = f"{fault.back - fault.at:.1f} s" if fault.back else "never"
            print(f"soak: chaos {fault.kind} {fault.target}: back after {took} {fault.error or ''}", flush=True)

    def restart_crashed(self) -> list[Fault]:
        """Restart, as a supervisor would (compose's `restart: unless-stopped`), every process that
        exited by itself, each recorded as a `crashed` fault: a Redis restart made a Celery worker
        exit (kombu's restore_unacked after a lost connection: AttributeError, exit 1)."""
        stack = self.soak.stack
        crashed = []
        for name, process in list(stack.processes.items()):
            if process.poll() is None:
                continue
            fault = Fault("crashed", f"{name} (exit {process.returncode})", time.time())
            stack.processes.pop(name)
            try:
                if name.startswith("worker"):
                    concurrency = int(stack.env.get("CELERY_CONCURRENCY", "2"))
                    stack._wait_for_workers(
                        [stack.spawn_worker(int(name[len("worker") :]), concurrency)], RESTART_TIMEOUT
                    )  # noqa: SLF001
                elif name in GATEWAYS:
                    stack.start_gateway(timeout=RESTART_TIMEOUT, name=name, port=self.soak.gateway_ports[name])
                elif name == "daemon":
                    stack.start_daemon()
                elif name == "webserver":
                    stack.start_webserver(RESTART_TIMEOUT)
                elif name == "code_server":
                    stack.start_code_server(RESTART_TIMEOUT)
                fault.back = time.time()
            except Exception as exc:  # noqa: BLE001 (recorded: the report shows it)
                fault.error = f"{type(exc).__name__}: {exc}"[:500]
            self.faults.append(fault)
            crashed.append(fault)
            print(f"soak: {fault.target} had exited by itself: restarted {fault.error or ''}", flush=True)
        return crashed

    def _delay(self) -> None:
        self.stopping.wait(self.rng.uniform(0, MAX_RESTART_DELAY))

    def _worker(self, fault: Fault) -> None:
        stack = self.soak.stack
        name = self.rng.choice(sorted(n for n in stack.processes if n.startswith("worker")))
        fault.target = name
        stack.kill(name)
        fault.at = time.time()
        self._delay()
        celery_name = stack.spawn_worker(int(name[len("worker") :]), int(stack.env.get("CELERY_CONCURRENCY", "2")))
        stack._wait_for_workers([celery_name], RESTART_TIMEOUT)  # noqa: SLF001 (devtools' own helper)
        fault.back = time.time()

    def _code_server(self, fault: Fault) -> None:
        """kill -9 the code server and start it again on its address, as its supervisor would;
        the webserver and daemon reconnect by themselves. (CODE_SERVER=managed: kill the ones
        they spawned, and wait for them to spawn new ones.)"""
        stack = self.soak.stack
        if not stack.managed_code_servers:
            fault.target = "code_server"
            stack.kill("code_server")
            fault.at = time.time()
            self._delay()
            stack.start_code_server(RESTART_TIMEOUT)
            fault.back = time.time()
            return
        pids = _managed_code_servers(self.soak)
        fault.target = f"{len(pids)} processes"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        fault.at = time.time()
        # Their supervisor is the webserver or daemon: back once both have a code server again.
        deadline = time.time() + 180
        while time.time() < deadline and not self.stopping.is_set():
            if len(_managed_code_servers(self.soak)) >= len(pids):
                fault.back = time.time()
                return
            time.sleep(0.5)

    def _daemon(self, fault: Fault) -> None:
        fault.target = "daemon"
        self.soak.stack.kill("daemon")
        fault.at = time.time()
        self._delay()
        self.soak.stack.start_daemon()
        fault.back = time.time()

    def _webserver(self, fault: Fault) -> None:
        fault.target = "webserver"
        self.soak.stack.kill("webserver")
        fault.at = time.time()
        self._delay()
        self.soak.stack.start_webserver(RESTART_TIMEOUT)
        fault.back = time.time()

    def _gateway(self, fault: Fault) -> None:
        name = self.rng.choice(GATEWAYS)
        fault.target = name
        self.soak.stack.kill(name)
        fault.at = time.time()
        self._delay()
        self.soak.stack.start_gateway(timeout=RESTART_TIMEOUT, name=name, port=self.soak.gateway_ports[name])
        fault.back = time.time()

    def _redis(self, fault: Fault) -> None:
        fault.target = "redis"
        self.soak.redis.stop(signal.SIGTERM)
        fault.at = time.time()
        self._delay()
        self.soak.redis.start()
        fault.back = time.time()

    def _postgres_pause(self, fault: Fault) -> None:
        fault.target = "postgres"
        self.soak.postgres.signal_group(signal.SIGSTOP)
        fault.at = time.time()
        time.sleep(PG_PAUSE_SECONDS)
        self.soak.postgres.signal_group(signal.SIGCONT)
        fault.back = time.time()
