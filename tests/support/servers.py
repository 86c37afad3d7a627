"""Real HTTP servers on loopback for tests: the reference model server and small fakes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import uvicorn

from devtools.reference_server import service_env
from devtools.stack import REPO_ROOT, wait_for_http
from tests.support.e2e_stack import free_port
from tests.support.warm_interpreter import warm_interpreter


@contextmanager
def reference_server(*args: str, port: int | None = None) -> Iterator[str]:
    """`python -m devtools.reference_server` in a subprocess; yields its base URL."""
    with reference_servers(list(args), ports=[port]) as (url,):
        yield url


@contextmanager
def reference_servers(*arg_lists: list[str], ports: list[int | None] | None = None) -> Iterator[list[str]]:
    """Several reference servers (the arguments of each), started at once rather than one after
    another (each takes seconds to import its vision code); yields their base URLs."""
    chosen = [port or free_port() for port in (ports or [None] * len(arg_lists))]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for args, port in zip(arg_lists, chosen, strict=True):
            command = [sys.executable, "-m", "devtools.reference_server", "--port", str(port), *args]
            # Forked from the worker's warm interpreter (FastAPI and uvicorn imported once).
            processes.append(warm_interpreter().popen(command, cwd=REPO_ROOT, env=os.environ))
        urls = [f"http://127.0.0.1:{port}" for port in chosen]
        for url, process in zip(urls, processes, strict=True):
            wait_for_http(f"{url}/sam3/health", 60, process)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End a terminated reference server. A hung request (the `hang` knob) keeps uvicorn's
    graceful shutdown waiting: past a second, a SIGINT makes uvicorn, already shutting down,
    force its exit (it was 3 s of waiting, then a kill); a kill if even that does not end it."""
    for then in (lambda: process.send_signal(signal.SIGINT), process.kill):
        try:
            process.wait(timeout=1)
            return
        except subprocess.TimeoutExpired:
            then()
    process.wait()


def set_knobs(url: str, **knobs: Any) -> None:
    httpx.put(f"{url}/_knobs", json=knobs, timeout=5).raise_for_status()
    httpx.delete(f"{url}/_stats", timeout=5).raise_for_status()


def service_urls(url: str) -> dict[str, str]:
    """Settings (field names) that point every model service at the reference server."""
    return {name.lower(): value for name, value in service_env(url).items()}


@contextmanager
def app_in_thread(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a daemon thread on a free loopback port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise TimeoutError("the fake server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Gate:
    """Holds the proxied calls it gates: `entered` is set once one arrived, `release` lets them on."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def rearm(self) -> None:
        """Hold the next gated calls again (one proxy for several tests of a module)."""
        self.release.clear()
        self.entered.clear()

    def wait_entered(self, timeout: float = 120.0) -> None:
        if not self.entered.wait(timeout):
            raise AssertionError(f"no gated call arrived within {timeout:.0f} s")


@contextmanager
def gated_proxy(target: str, gated: str | tuple[str, ...]) -> Iterator[tuple[str, Gate]]:
    """A loopback proxy to ``target`` that holds every request whose path ends with ``gated``
    (or one of them) until ``gate.release`` is set: a model call that takes exactly as long as a
    test needs."""
    gate = Gate()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"].endswith(gated):
            gate.entered.set()
            while not gate.release.is_set():
                await anyio.sleep(0.05)
        # The headers of the service contracts both ways (the binary wire's fields ride in X-Fields).
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.lower() in (b"content-type", b"accept")}
        async with httpx.AsyncClient(timeout=600) as http:
            answer = await http.request(scope["method"], f"{target}{scope['path']}", content=body, headers=headers)
        content_type = answer.headers.get("content-type", "application/json").encode()
        passed = [(b"content-type", content_type)]
        passed += [(b"x-fields", v.encode()) for v in answer.headers.get_list("x-fields")]
        await send({"type": "http.response.start", "status": answer.status_code, "headers": passed})
        await send({"type": "http.response.body", "body": answer.content})

    with app_in_thread(app) as url:
        try:
            yield url, gate
        finally:
            gate.release.set()  # let held calls end before the server stops
