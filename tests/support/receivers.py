"""A webhook receiver on a loopback port: records every POST, answers a scripted status."""

from __future__ import annotations

import functools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.support.handler_server import handler_server


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    answers: list[int] = field(default_factory=list)  # status per POST in order; 200 once used up
    answer_with: Callable[[], int] | None = None  # when set, asked for each POST's status instead
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def posts(self) -> list[Received]:
        with self.lock:
            return list(self.received)


@contextmanager
def webhook_receiver(answers: list[int] | None = None, tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """`tls`: serve https with this server context (its certificate names the host)."""
    receiver = Receiver(url="", answers=list(answers or []))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with receiver.lock:
                receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                if receiver.answer_with is not None:
                    code = receiver.answer_with()
                else:
                    code = receiver.answers.pop(0) if receiver.answers else 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    wrap = None if tls is None else functools.partial(tls.wrap_socket, server_side=True)
    with handler_server(Handler, wrap) as server:
        scheme = "https" if tls is not None else "http"
        receiver.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/hook"
        yield receiver


@contextmanager
def hostile_receiver(behaviour: str, seconds: float = 8.0) -> Iterator[str]:
    """A receiver that costs whoever calls it: `huge` answers 200 with a 300 MB body (the same
    64 KB chunk written over and over, so this side allocates nothing), `trickle-body` answers 200
    then a byte every 0.1 s, `trickle-headers` sends its headers a byte every 0.1 s; a trickle
    stops after `seconds`. Yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                conn.recv(65536)  # the POST (small: a workflow's state)
                if behaviour == "huge":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 314572800\r\n\r\n")
                    chunk = b"x" * 65536
                    for _ in range(314572800 // len(chunk)):
                        conn.sendall(chunk)
                    return
                head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n"
                trickled = head if behaviour == "trickle-headers" else b"y" * 100000
                if behaviour == "trickle-body":
                    conn.sendall(head)
                ends = time.monotonic() + seconds
                for byte in trickled:
                    if stop.is_set() or time.monotonic() > ends:
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(0.1)
            except OSError:
                return  # the caller hung up: what a bounded client does

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    finally:
        stop.set()
        listener.close()
