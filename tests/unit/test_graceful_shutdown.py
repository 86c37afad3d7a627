"""Graceful shutdown of the gateway: SIGTERM ends the open event streams with a reconnect hint.

The server side (uvicorn waits for responses in flight, a POST in flight completes) is tested
end to end in tests/e2e/test_process_faults.py.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from gateway.event_streams import SHUTDOWN_RETRY_MS, EventStreams, StreamLimitReached
from gateway.routes.events import _stream
from gateway.schemas import WorkflowState
from gateway.settings import GatewaySettings
from gateway.shutdown import drain_streams_on_signals

RUNNING = WorkflowState(workflowId="jewelry-gen-x", status="RUNNING", progress=45, currentStep="GENERATING_MASK")


async def _open_stream(streams: EventStreams) -> Any:
    lease = streams.open("caller")
    watch = lease.follow("jewelry-gen-x", lambda: RUNNING)
    settings = GatewaySettings(event_poll_seconds=0.05, event_stream_max_seconds=3600)
    return _stream("jewelry-gen-x", watch, lease, settings)


def test_a_drain_ends_every_open_stream_with_a_retry_hint() -> None:
    async def scenario() -> tuple[list[str], float]:
        streams = EventStreams(poll_seconds=0.05, per_caller=10, total=100)
        stream = await _open_stream(streams)
        seen = [await anext(stream), await anext(stream)]  # the first retry, then the progress event
        assert "event: progress" in seen[1]
        started = time.monotonic()
        streams.drain()
        seen += [chunk async for chunk in stream]  # ends by itself: no 15 s keep-alive, no hour
        assert streams.open_streams() == 0
        with pytest.raises(StreamLimitReached, match="restarting"):
            streams.open("another")
        await streams.close()
        return seen, time.monotonic() - started

    seen, took = asyncio.run(scenario())
    assert seen[2] == f"retry: {SHUTDOWN_RETRY_MS}\n\n"
    assert seen[3].startswith("id: 2\nevent: shutdown\n") and len(seen) == 4, seen
    assert took < 1.0


def test_sigterm_drains_the_streams_then_reaches_the_servers_own_handler() -> None:
    """The handler is chained in front of the server's (uvicorn's), which still gets the signal."""
    server_got: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: server_got.append(signum))
    try:

        async def scenario() -> bool:
            streams = EventStreams(poll_seconds=0.05, per_caller=10, total=100)
            restore = drain_streams_on_signals(streams)
            try:
                signal.raise_signal(signal.SIGTERM)
                await asyncio.sleep(0.05)  # the drain is scheduled on the loop
                return streams.draining
            finally:
                restore()

        assert asyncio.run(scenario())
        assert server_got == [signal.SIGTERM]
        signal.raise_signal(signal.SIGTERM)  # restored: only the server's handler now
        assert server_got == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, original)
