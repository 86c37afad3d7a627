"""Shared by the benchmark scripts: percentiles, a request body, wrk, a process's CPU time and the
reference model server with latencies."""

from __future__ import annotations

import base64
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (/proc): what a request costs the server
    whatever else loads the machine, where latency and throughput measure the load too."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(roots: list[int]) -> float:
    """User + system CPU seconds of these processes and all their live descendants so far,
    children they reaped included (/proc `cutime`, `cstime`): a warm code server's run workers,
    reaped by its forkserver, count after they exit. The difference over a few requests is what
    they cost a stack, however loaded the machine is (wall times grow with the load; this much
    less)."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(f) for f in fields[11:15])
    wanted, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in wanted]
        wanted.update(children)
        frontier += children
    return sum(times.get(pid, 0) for pid in wanted) / os.sysconf("SC_CLK_TCK")


def wrk_ms(text: str) -> float:
    """wrk's '812.00us', '4.71ms', '1.20s' or '2.00m' in milliseconds."""
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


@dataclass(frozen=True)
class WrkRun:
    rate: float  # answers a second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    answers: int
    errors: str  # wrk's non-2xx and socket-error lines, "" when none
    cpu_ms: float | None  # the server process's CPU milliseconds an answer (when its pid was given)
    raw: str = ""  # wrk's own report

    def line(self) -> str:
        cpu = f", {self.cpu_ms:.2f} ms CPU an answer" if self.cpu_ms is not None else ""
        if not self.p50_ms:  # no latency distribution parsed: show wrk's report as it is
            return f"{self.rate:.0f}/s{cpu}; wrk said: " + " | ".join(self.raw.strip().splitlines()[2:12])
        return (
            f"{self.rate:.0f}/s median={self.p50_ms:.1f} ms p90={self.p90_ms:.1f} ms p99={self.p99_ms:.1f} ms"
            f"{cpu}{'; ' + self.errors if self.errors else ''}"
        )


def run_wrk(base_url: str, lua: str, connections: int, seconds: float, server_pid: int | None = None) -> WrkRun:
    """wrk (Debian's package) as the load generator: C, so the clients do not eat the CPU the
    server needs, as a Python client does. `lua` defines wrk's `request` function."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    cpu_before = process_cpu_seconds(server_pid) if server_pid else 0.0
    try:
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "30s", "--latency"]
            + ["-s", script.name, base_url],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 90,
        ).stdout
    finally:
        Path(script.name).unlink()
    cpu = process_cpu_seconds(server_pid) - cpu_before if server_pid else 0.0
    found = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)$", out, re.MULTILINE))
    rate = re.search(r"Requests/sec:\s+(\S+)", out)
    answers = re.search(r"(\d+) requests in", out)
    errors = [m.group(0) for m in re.finditer(r"(Non-2xx or 3xx responses: \d+|Socket errors: .*)", out)]
    count = int(answers.group(1)) if answers else 0
    return WrkRun(
        rate=float(rate.group(1)) if rate else 0.0,
        p50_ms=wrk_ms(found.get("50", "0ms")),
        p90_ms=wrk_ms(found.get("90", "0ms")),
        p99_ms=wrk_ms(found.get("99", "0ms")),
        answers=count,
        errors="; ".join(errors),
        cpu_ms=cpu * 1000 / count if server_pid and count else None,
        raw=out,
    )


@contextmanager
def reference_services(latency: dict[str, float], instant: bool = False) -> Iterator[dict[str, str]]:
    """The reference model server on a free port with added ``latency`` (endpoint -> seconds);
    yields the environment that points the model services and Gemini at it; stops it after.
    ``instant``: its trivial stand-ins instead of its classical vision (`--instant`)."""
    import sys

    from devtools.reference_server import service_env
    from devtools.stack import free_port, wait_for_http

    port = free_port()
    latency_args = [a for endpoint, s in latency.items() for a in ("--latency", f"{endpoint}={s}")]
    server = subprocess.Popen(
        [sys.executable, "-m", "devtools.reference_server", "--port", str(port), *latency_args]
        + (["--instant"] if instant else []),
        cwd=REPO_ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/sam3/health", 60, server)
        yield {**service_env(base), "GEMINI_API_KEY": "reference-server", "GEMINI_BASE_URL": f"{base}/gemini"}
    finally:
        server.terminate()
        server.wait(timeout=10)
