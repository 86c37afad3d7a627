"""The gateway app in-process (TestClient) with Dagster pointed at a closed port.

Input checks run before the gateway talks to Dagster, so these tests need no Dagster; a
request that passes them would get 503, which the tests treat as "got past validation".
`gateway_with_fake_dagster` swaps in a Dagster that answers and records every call instead, so a
test can tell "refused before anything was stored or launched" from "stopped by the 503".
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi.testclient import TestClient
from PIL import Image

from gateway.dagster_api.models import RunInfo
from gateway.main import create_app
from gateway.settings import GatewaySettings
from tests.support.e2e_stack import free_port

T = TypeVar("T")


@contextmanager
def gateway_client(tmp_path: Path, client_address: str = "testclient", **overrides: Any) -> Iterator[TestClient]:
    if overrides.get("gateway_api_keys"):
        overrides.setdefault("gateway_secret", "test-secret-of-the-gateway")
    else:
        overrides.setdefault("allow_anonymous", True)
    settings = GatewaySettings(local_blob_root=str(tmp_path / "blobs"), dagster_port=free_port(), **overrides)
    with TestClient(create_app(settings), client=(client_address, 50000)) as client:
        yield client


def from_another_address(client: TestClient, client_address: str) -> TestClient:
    """A client of the same gateway app, already started by `client` (its state, rate-limit
    counters included), connecting from another address: what tells "counted per address" from
    "a fresh gateway counts nothing yet". Used without `with`, so the app's lifespan is not run
    a second time (that would replace the state)."""
    return TestClient(client.app, client=(client_address, 50000))


class FakeDagster:
    """Stands in for `DagsterRuns`: always reachable, no runs yet, every write recorded."""

    def __init__(self) -> None:
        self.launch_slots = threading.BoundedSemaphore(4)
        self.launch_wait_seconds = 5.0
        self.partitions_added: list[str] = []
        self.launches: list[tuple[str, str]] = []  # (job, partition)

    def ping(self, timeout: float | None = 2.0) -> bool:
        return True

    def reachable(self, max_age: float) -> bool:
        return self.ping(timeout=None)

    def add_partition(self, request_id: str) -> None:
        self.partitions_added.append(request_id)

    def delete_partition(self, request_id: str) -> None:
        self.partitions_added.remove(request_id)

    def launch(
        self, job_name: str, request_id: str, run_config: dict[str, Any], tags: dict[str, str] | None = None
    ) -> str:
        self.launches.append((job_name, request_id))
        return f"run-{len(self.launches)}"

    def latest_run(self, request_id: str) -> RunInfo | None:
        return None

    latest_run_cached = latest_run

    def remembered_run(self, request_id: str) -> RunInfo | None:
        return None  # nothing in memory: GET asks latest_run_cached

    def newest_run_tagged(self, tags: dict[str, str]) -> RunInfo | None:
        return None

    first_run_tagged = newest_run_tagged

    def runs_in_flight(self, tags: dict[str, str]) -> int:
        return 0

    def forget(self, request_id: str) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def gateway_with_fake_dagster(tmp_path: Path, **overrides: Any) -> Iterator[tuple[TestClient, FakeDagster]]:
    with gateway_client(tmp_path, **overrides) as client:
        client.app.state.runs.close()  # type: ignore[attr-defined]
        fake = FakeDagster()
        client.app.state.runs = fake  # type: ignore[attr-defined]
        yield client, fake


def stored_blobs(tmp_path: Path) -> list[str]:
    """Every file the gateway's local blob store holds (the folder `gateway_client` gives it)."""
    root = tmp_path / "blobs"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def png_base64(size: tuple[int, int] = (40, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 150, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def start_body(**changes: Any) -> dict[str, Any]:
    return {"originalImageBase64": png_base64(), "maskPoints": [{"x": 0.5, "y": 0.5, "label": 1}], **changes}


def poll_until(read: Callable[[], T], done: Callable[[T], bool], timeout: float = 10.0) -> T:
    """`read()` until `done` says so (the value is returned), or AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout} s")
        time.sleep(0.02)


def sweeps_of(launcher: Any) -> Callable[[], int]:
    """Count the sweeps a gateway's StartLauncher completes from now on (its sweeper thread calls
    `self.sweep()` anew each pass). A sweep that *began* after an event has ended once the count
    grew by two: a window that covers what the sweepers do, without a fixed sleep."""
    done = [0]
    sweep = launcher.sweep

    def counted() -> int:
        try:
            return int(sweep())
        finally:
            done[0] += 1

    launcher.sweep = counted
    return lambda: done[0]


def settled_starts(launchers: list[Any], sweeps: list[Callable[[], int]] | None = None, timeout: float = 10.0) -> None:
    """Wait until no launcher has a start queued or in flight and, given their `sweeps_of`
    counters, each ran a whole sweep after this call: every takeover or launch the launchers
    were going to make has been made. Without `sweeps`: for starts accepted before this call, on
    gateways whose heartbeats are fresh (no takeover due)."""
    marks = [count() for count in sweeps or []]
    poll_until(
        lambda: (
            all(count() >= mark + 2 for count, mark in zip(sweeps or [], marks, strict=True))
            and all(launcher.pending() == 0 for launcher in launchers)
        ),
        bool,
        timeout,
    )
