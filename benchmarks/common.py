"""Shared by the benchmark scripts: percentiles and a request body."""

from __future__ import annotations

import base64
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import sqlalchemy as sa

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE = base64.b64encode((REPO_ROOT / "samples" / "ring.jpg").read_bytes()).decode()
BODY = {"originalImageBase64": SAMPLE, "maskPoints": [{"x": 0.245, "y": 0.467, "label": 1}]}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(label: str, seconds: list[float]) -> str:
    if not seconds:
        return f"{label}: no samples"
    return (
        f"{label}: n={len(seconds)} median={statistics.median(seconds) * 1000:.1f} ms "
        f"p95={percentile(seconds, 95) * 1000:.1f} ms p99={percentile(seconds, 99) * 1000:.1f} ms"
    )


# Benchmarks poll hard and run many requests: no rate limit, no re-generation runs in between.
BENCH_ENV = {"RATE_LIMIT_PER_MINUTE": "1000000", "REGENERATION_SENSOR_ENABLED": "false"}


def final_state(client: httpx.Client, workflow_id: str, interval: float = 0.02, timeout: float = 600.0) -> dict:
    """Poll GET until the workflow is no longer RUNNING; any non-200 answer stops the benchmark."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/workflow/{workflow_id}")
        if response.status_code != 200:
            raise RuntimeError(f"GET answered {response.status_code}: {response.text[:300]}")
        state = response.json()
        if state["status"] != "RUNNING":
            return state
        time.sleep(interval)
    raise TimeoutError(f"{workflow_id} still RUNNING after {timeout:.0f} s")


PG_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL for one benchmark run, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
