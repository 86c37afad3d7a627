"""The gateway's ping of Dagster (what a start asks before storing anything) against a webserver
that drops a kept-alive connection as a request arrives on it, as uvicorn does with one that sat
idle past its keep-alive: CI's run of 2026-12-05 answered one of eight concurrent starts 503
("Dagster is not reachable") in 23 ms, the ping having gone out on such a connection."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler

from gateway.dagster_api.transport import GraphQLTransport
from gateway.settings import GatewaySettings
from tests.support.handler_server import handler_server


class _DropsKeptConnections(BaseHTTPRequestHandler):
    """Answers the first request of each connection and keeps it open (HTTP/1.1); the next
    request on it is read and the connection closed without an answer."""

    protocol_version = "HTTP/1.1"
    answered_on_connection = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.answered_on_connection:
            self.close_connection = True  # dropped: no status line, no body
            return
        self.answered_on_connection += 1
        body = json.dumps({"data": {"version": "test"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _NeverAnswers(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        time.sleep(1.5)  # past the ping's timeout below: the client gives up first

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_dropped_kept_alive_connection_is_not_an_outage() -> None:
    with handler_server(_DropsKeptConnections) as server:
        transport = GraphQLTransport(GatewaySettings(dagster_port=server.server_address[1]))
        try:
            assert transport.ping(timeout=None)  # answered; the connection is kept for the next
            assert transport.ping(timeout=None), "a dropped kept-alive connection was taken for Dagster down"
        finally:
            transport.close()


def test_a_ping_that_times_out_is_not_tried_again() -> None:
    with handler_server(_NeverAnswers) as server:
        transport = GraphQLTransport(GatewaySettings(dagster_port=server.server_address[1]))
        try:
            began = time.monotonic()
            assert not transport.ping(timeout=0.5)
            assert time.monotonic() - began < 1.0  # one timeout, not two
        finally:
            transport.close()
