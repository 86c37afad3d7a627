"""Graceful shutdown: on SIGTERM (or SIGINT) the open event streams end with a reconnect hint.

Uvicorn answers SIGTERM by closing its listening socket and waiting for every response in flight
(a POST that is still uploading its photo finishes and launches its run), then runs the app's
lifespan shutdown. An event stream is a response in flight that ends by itself only after
EVENT_STREAM_MAX_SECONDS, so the streams must hear of the signal before the lifespan does: this
chains a handler in front of the server's own (installed before the lifespan starts), which
drains the streams on the event loop and then lets the server do what it always does.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from gateway.event_streams import EventStreams

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def drain_streams_on_signals(streams: EventStreams) -> Callable[[], None]:
    """Install the chained handlers (main thread only: a TestClient's lifespan runs elsewhere and
    has no signals to hear); returns what puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(streams.drain)
        before = previous[signal.Signals(signum)]
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_DFL:  # nobody else handles it: the default (exit) after the drain
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for sig in SIGNALS:
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, before in previous.items():
            signal.signal(sig, before)

    return restore
