"""Real backing services and programs for tests: Azurite (Azure Blob emulator, from npm),
PostgreSQL, Redis, Chromium, Prometheus.

A test that needs one and cannot find it calls `missing`: it fails in CI (CI=true) and is
skipped elsewhere, with the reason (the end of a local run lists the skips; tests/conftest.py).
`.ci/run` installs or starts each of them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

from devtools.stack import REPO_ROOT
from tests.support.e2e_stack import free_port

NODE_BIN = REPO_ROOT / ".data" / "node" / "node_modules" / ".bin"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key (not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PG_DSN = os.environ.get("TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def on_ci() -> bool:
    """CI is set to something true (CI=true, CI=1; not empty, 0, false or no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str) -> NoReturn:
    """A dependency of the test is not there: fail on CI (which must have it), skip elsewhere."""
    if on_ci():
        pytest.fail(f"{reason} (CI must have it: .ci/run installs it)", pytrace=False)
    pytest.skip(reason)


def program(name: str, install: str) -> Path:
    """An executable on the PATH (Debian's `chromium`, `prometheus`), or `missing`."""
    found = shutil.which(name)
    if found is None:
        missing(f"{name} is not installed ({install}; .ci/run does)")
    return Path(found)


def _wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"azurite exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"azurite did not listen on {port} within {timeout} s")


@contextmanager
def azurite(location: Path) -> Iterator[str]:
    """Start azurite-blob on a free port; yields a connection string."""
    binary = shutil.which("azurite-blob", path=f"{NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if binary is None:
        missing("Azurite is not installed (make node-tools installs it from the npm registry)")
    port = free_port()
    location.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            binary,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(location),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_port(port, 30, process)
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server for this test run; yields its URL."""
    import psycopg2

    try:
        admin = psycopg2.connect(PG_DSN, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        missing(f"PostgreSQL is not reachable ({PG_DSN}): {exc}")
    admin.autocommit = True
    name = f"jewel_test_{uuid.uuid4().hex[:12]}"
    params = admin.get_dsn_parameters()
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{params['user']}@{params['host']}:{params['port']}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def pg_sessions_opened(url: str) -> int:
    """Sessions PostgreSQL has counted for the database, once every other one has ended (a
    backend's figures reach the statistics when it exits)."""
    import psycopg2

    with psycopg2.connect(url, connect_timeout=5) as conn, conn.cursor() as cur:
        deadline = time.monotonic() + 30
        while True:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            others = cur.fetchone()[0]  # type: ignore[index]
            if others == 0:
                break
            assert time.monotonic() < deadline, f"{others} connections to the database stay open"
            time.sleep(0.1)
        cur.execute("SELECT pg_stat_force_next_flush(), pg_stat_clear_snapshot()")
        cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return int(cur.fetchone()[0])  # type: ignore[index]


def redis_url(db: int = 15) -> str:
    """The machine's Redis (127.0.0.1:6379), checked reachable; tests keep their keys unique."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1.0):
            pass
    except OSError:
        missing("Redis is not running on 127.0.0.1:6379")
    return f"redis://127.0.0.1:6379/{db}"
