"""A loopback TCP forwarder that can be cut: a service that goes away without stopping it.

Tests that need "Dagster is down" point a gateway of their own at the forwarder in front of a
shared stack's webserver, then cut it: the gateway's next connection is refused as if the
webserver had stopped, and the shared stack, which other tests still use, keeps running.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, target):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Forwarder:
    """Accepts on a free loopback port and relays each connection to `target_port`."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
            threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and drop the open ones. `shutdown` first: a socket closed while
        another thread blocks in its accept() or recv() keeps listening or connected until that
        call returns, and shutdown is what wakes it (Linux)."""
        with self._lock:
            ends, self._open = [self._listener, *self._open], []
        for end in ends:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()


@contextmanager
def forwarder(target_port: int) -> Iterator[Forwarder]:
    relay = Forwarder(target_port)
    try:
        yield relay
    finally:
        relay.cut()
