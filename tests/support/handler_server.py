"""A `http.server` handler class served on a loopback port in a daemon thread: the tests' small
fakes (webhook receivers, an OTLP collector, a scripted model service) that answer per request
from plain Python, where an ASGI app would be more than they need."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def handler_server(
    handler: type[BaseHTTPRequestHandler], wrap: Callable[[socket.socket], socket.socket] | None = None
) -> Iterator[ThreadingHTTPServer]:
    """Serve `handler` on 127.0.0.1 at a free port (`server.server_address[1]`) until the block
    ends; `wrap` replaces the listening socket (TLS)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if wrap is not None:
        server.socket = wrap(server.socket)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
