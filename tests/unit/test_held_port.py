"""`tests.support.e2e_stack.held_port`: a port given to a stack for a server that starts later is
refused like a free one, is taken by nothing else meanwhile, and still takes the server (a
picked-and-released port was once taken in between: test_services' reference server failed to
bind it)."""

from __future__ import annotations

import errno
import socket

import pytest
import uvicorn

from tests.support.e2e_stack import held_port


def test_a_held_port_refuses_connections_and_other_binds() -> None:
    with held_port() as port:
        with socket.socket() as client, pytest.raises(ConnectionRefusedError):
            client.connect(("127.0.0.1", port))
        with socket.socket() as other, pytest.raises(OSError) as refused:
            other.bind(("127.0.0.1", port))
        assert refused.value.errno == errno.EADDRINUSE


def test_a_server_binding_as_uvicorn_does_listens_on_a_held_port() -> None:
    config = uvicorn.Config(app=None, host="127.0.0.1")  # type: ignore[arg-type]  # only its bind is used
    with held_port() as port:
        config.port = port
        with config.bind_socket() as server:
            server.listen()
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
