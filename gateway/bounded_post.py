"""One HTTP POST to a caller's server that ends by a deadline and reads at most a few KB back.

A receiver is the caller's code, not ours: one that answered 300 MB raised the gateway's memory by
600 MB (the answer was read whole), one that trickled a byte a second held a delivery thread for as
long as it liked (httpx's timeouts are per read). So the answer is read in chunks up to
`ANSWER_BYTES`, and a watchdog shuts the connection's socket down at the deadline, which ends a
blocked read or write at once, whatever phase the exchange is in. The socket comes from httpcore's
documented `trace` extension (the `connection.connect_tcp.complete` event carries the stream).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import httpx

ANSWER_BYTES = 4096  # what a receiver's answer may cost us: its status is all we use


class _Watchdog:
    """Shuts down every socket the request opened once `seconds` have passed."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            sock = info["return_value"].get_extra_info("socket")
            if sock is not None:
                with self._lock:
                    self._sockets.append(sock)
                    if self.fired:
                        _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                _shut(sock)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a recv/send blocked on it in another thread
    except OSError:
        pass  # closed already


def bounded_post(transport: httpx.BaseTransport, request: httpx.Request, deadline_seconds: float) -> int:
    """POST `request` on `transport`; the answer's status code. httpx.TimeoutException when the
    whole exchange (connect, send, status and headers) did not end within `deadline_seconds`; the
    rest of the answer is read up to ANSWER_BYTES while time is left, never waited for beyond it."""
    with _Watchdog(deadline_seconds) as watchdog:
        request.extensions = {
            **request.extensions,
            "timeout": httpx.Timeout(deadline_seconds).as_dict(),
            "trace": watchdog.trace,
        }
        try:
            response = transport.handle_request(request)
        except httpx.HTTPError as exc:
            if watchdog.fired:
                raise httpx.TimeoutException(f"no answer within {deadline_seconds:g} s") from None
            raise exc
        try:
            read = 0
            for chunk in response.iter_raw():
                read += len(chunk)
                if read >= ANSWER_BYTES:
                    break
        except httpx.HTTPError:
            if not watchdog.fired:
                raise
        finally:
            response.close()
    return response.status_code
