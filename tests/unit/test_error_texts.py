"""Issue 29, findings 6 and 7: what callers read of internal errors names no address or worker."""

from __future__ import annotations

import asyncio

import pytest

from gateway.dagster_api.errors import DagsterUnavailable
from gateway.event_streams import Watch
from gateway.workflow_state import public_error
from jewel_dagster.public_names import hide_addresses

INTERNAL = (
    'could not connect to code-server:4000; FATAL: password authentication failed for user "dagster" at 10.0.0.7:5432'
)


def test_the_event_stream_tells_a_dagster_error_as_get_does() -> None:
    def read() -> None:
        raise DagsterUnavailable(INTERNAL)

    async def first_snapshot() -> str | None:
        watch = Watch("jewelry-gen-x", read, poll_seconds=0.01)
        watch.listeners = 1
        task = asyncio.create_task(watch.run())
        await watch.wait(0, timeout=5)
        watch.listeners = 0
        task.cancel()
        assert watch.snapshot is not None
        return watch.snapshot.error

    error = asyncio.run(first_snapshot())
    assert error is not None and "error id" in error and "unavailable" in error, error
    assert "code-server" not in error and "10.0.0.7" not in error and "password" not in error


@pytest.mark.parametrize(
    ("message", "hidden"),
    [
        ("SAM3 (http://10.0.0.7:9000/sam3/segment) timed out", "10.0.0.7"),
        ("could not reach code-server:4000", "code-server:4000"),
        ("connection refused by 10.0.0.7:5432", "10.0.0.7"),
        ("connect to [fd00::7]:6379 failed", "fd00::7"),
        ("redis.example.internal:6379 reset the connection", "redis.example.internal"),
        ("Worker celery@worker-7f9c2d-abcde lost while running the step", "worker-7f9c2d-abcde"),
        ("the task was revoked on celery@gpu-box.local", "gpu-box.local"),
    ],
)
def test_addresses_and_worker_names_are_hidden(message: str, hidden: str) -> None:
    shown = hide_addresses(message)
    assert hidden not in shown, shown
    assert hidden not in public_error(message, "run-1234abcd")


@pytest.mark.parametrize(
    "message",
    [
        "at most 200 strokes",
        "the photo is 4000x3000: larger than 50,000,000 pixels",
        "step failed after 3 attempts: HTTP 503",
        "ratio 16:9 is not supported",
    ],
)
def test_ordinary_messages_are_left_as_they_are(message: str) -> None:
    assert hide_addresses(message) == message
