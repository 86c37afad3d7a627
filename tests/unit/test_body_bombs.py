"""Issue 29, finding 1: a body costs nothing before its key is checked, and its shape is bounded.

A 25 MB body of nested empty arrays passed the `{` count, and FastAPI parsed it on the event loop
before the key was checked: 401 after 8 s and +640 MB, every other request stalled meanwhile.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway.json_shape import json_shape_problem
from tests.support.gateway_client import gateway_client, png_base64
from tests.support.gateway_process import gateway_process, memory_kb

KEYS = {"GATEWAY_API_KEYS": "alpha-key,beta-key", "GATEWAY_SECRET": "test-secret-of-the-gateway"}
BOMB_BYTES = 25_000_000  # under MAX_BODY_BYTES (25 MiB): the byte limit lets it through


def nested_array_bomb(size: int = BOMB_BYTES) -> bytes:
    head, tail = b'{"originalImageBase64": "x", "junk": [', b"[]]}"
    return head + b"[]," * ((size - len(head) - len(tail)) // 3) + tail


def _send_without_key(url: str, body: bytes, answers: list[tuple[float, bytes]]) -> None:
    """POST the body on a raw socket; record how long the status line took after the headers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=120) as conn:
        head = (
            f"POST /workflow/start HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sent = time.perf_counter()
        conn.sendall(head)

        def push() -> None:
            try:
                conn.sendall(body)
            except OSError:
                pass  # the gateway answered and closed without reading it: what we want

        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        first = conn.recv(4096)
        answers.append((time.perf_counter() - sent, first))


def _reset_peak_memory(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from VmRSS


def test_bodies_without_a_key_are_refused_unread_while_other_callers_are_answered(tmp_path: Path) -> None:
    bomb = nested_array_bomb()
    with gateway_process(tmp_path, **KEYS, WEBHOOK_SECRET="s3cret") as (url, pid):
        with httpx.Client(base_url=url, headers={"X-API-Key": "beta-key"}, timeout=60) as other:
            for _ in range(20):  # warm: the first calls import and allocate what later ones reuse
                assert other.get("/webhooks/secret").status_code == 200
            baseline: list[float] = []  # the same GET with no bomb: what this machine's load costs now
            for _ in range(100):
                started = time.perf_counter()
                assert other.get("/webhooks/secret").status_code == 200
                baseline.append(time.perf_counter() - started)
            before = memory_kb(pid)
            _reset_peak_memory(pid)
            answers: list[tuple[float, bytes]] = []
            bombs = [threading.Thread(target=_send_without_key, args=(url, bomb, answers)) for _ in range(3)]
            latencies: list[float] = []
            for thread in bombs:
                thread.start()
            while any(t.is_alive() for t in bombs) or len(latencies) < 100:
                started = time.perf_counter()
                assert other.get("/webhooks/secret").status_code == 200
                latencies.append(time.perf_counter() - started)
            for thread in bombs:
                thread.join()
            growth_mb = (memory_kb(pid, "VmHWM") - before) / 1024
    assert len(answers) == 3 and all(b" 401 " in first.split(b"\r\n")[0] for _, first in answers), answers
    slowest = max(seconds for seconds, _ in answers)
    p99 = statistics.quantiles(latencies, n=100)[98]
    quiet_p99 = statistics.quantiles(baseline, n=100)[98]
    print(
        f"401 after {slowest * 1000:.1f} ms (slowest of 3), +{growth_mb:.1f} MB, "
        f"other caller's GET p99 {p99 * 1000:.1f} ms (without bombs {quiet_p99 * 1000:.1f} ms)"
    )
    # What this guards against: a parse on the event loop took seconds (8 s quiet, 47 s loaded)
    # and +640 MB. The bounds (401 < 100 ms, p99 < 50 ms) hold on a quiet machine, but a
    # loaded one (CI beside a stress-ng core) gave the other caller a 270 ms p99 while three 25 MB
    # bodies crossed loopback: the bounds here sit far under the stall and far over that noise
    # (printed above for the record); the memory bound holds whatever the load.
    assert growth_mb < 20, f"gateway memory grew {growth_mb:.0f} MB"
    assert slowest < 1.0 + 2 * quiet_p99, f"401 took {slowest:.2f} s"
    assert p99 < 1.0 + 2 * quiet_p99, f"another caller's GET p99 {p99 * 1000:.0f} ms"


def test_a_callers_nested_array_bomb_is_413_before_it_is_parsed(tmp_path: Path) -> None:
    with gateway_client(tmp_path, gateway_api_keys="alpha-key") as client:
        started = time.perf_counter()
        response = client.post(
            "/workflow/start",
            content=nested_array_bomb(),
            headers={"X-API-Key": "alpha-key", "Content-Type": "application/json"},
        )
        elapsed = time.perf_counter() - started
    assert response.status_code == 413 and "objects and arrays" in response.json()["detail"], response.text
    assert elapsed < 5, elapsed  # parsing it took 8 s on a quiet machine


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"a": [' + b"[]," * 30 + b"[]]}", "objects and arrays"),
        (b'{"a": [' + b"0," * 200 + b"0]}", "items"),
        (b'{"a": {"b": ' + b'{"c": ' * 10 + b"1" + b"}" * 12, "levels deep"),
        (b"[" * 20 + b"]" * 20, "levels deep"),
    ],
    ids=["containers", "items", "objects-deep", "arrays-deep"],
)
def test_shapes_that_cost_too_much_to_parse_are_named(body: bytes, words: str) -> None:
    problem = json_shape_problem(body, max_containers=20, max_items=100, max_depth=8)
    assert problem is not None and words in problem


@pytest.mark.parametrize(
    "body",
    [
        b'{"photo": "' + png_base64().encode() + b'", "points": [{"x": 0.5, "y": 0.5}]}',
        b'{"url": "http://[::1]/a,b,{[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}',  # brackets in a string count for nothing
        b'{"s": "quote \\" then [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ and \\\\", "t": [1, 2]}',  # escapes
    ],
    ids=["photo", "brackets-in-strings", "escaped-quotes"],
)
def test_ordinary_bodies_pass(body: bytes) -> None:
    assert json_shape_problem(body, max_containers=20, max_items=100, max_depth=8) is None
