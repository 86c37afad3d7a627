"""The wire to dagster-webserver: GraphQL documents over httpx, and `DagsterGraphQLClient` per thread.

Nothing here knows what a run or a request is: it sends, retries reads once on a dropped
connection, turns what came back into `DagsterError`/`DagsterUnavailable`, and remembers when
Dagster last answered (what a start asks before storing anything, `reachable`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import requests
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
from gql.transport import exceptions as gql_errors

from gateway.dagster_api.errors import DagsterError, DagsterUnavailable
from gateway.settings import GatewaySettings

# gql 4 wraps a refused connection in TransportConnectionFailed; gql 3 (what pip resolves with
# some dependency sets) lets the requests error through, which the requests errors beside it catch.
_GQL_CONNECTION_FAILED: tuple[type[Exception], ...] = tuple(
    error for error in (getattr(gql_errors, "TransportConnectionFailed", None),) if error is not None
)

# What the webserver answers while its code location is down or reloading (a code server restarted):
# transient, so the caller is told to retry (503), not that the pipeline refused it (502). The chaos
# soak's code-server kills found both on /workflow/generate, which launches inside the call.
_CODE_LOCATION_DOWN = ("DagsterUserCodeUnreachableError", "Could not reach user code server", "Could not find Pipeline")


def code_location_down(message: str) -> bool:
    """Whether a refusal from the webserver says the code location is unavailable for now."""
    return any(marker in message for marker in _CODE_LOCATION_DOWN)


class GraphQLTransport:
    """POSTs GraphQL documents to the webserver, with a timeout each and bounded retries."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        self.url = f"http://{settings.dagster_host}:{settings.dagster_port}/graphql"
        self.http = httpx.Client(timeout=settings.dagster_timeout_seconds)
        self._local = threading.local()
        self._ping_lock = threading.Lock()
        self._last_ping: tuple[float, bool] | None = None
        # (monotonic time, answered) of the last call of ours: `reachable` answers from it.
        self.contact: tuple[float, bool] | None = None

    @property
    def client(self) -> DagsterGraphQLClient:
        """One client per thread: its gql transport holds one session and is not thread-safe
        (shared across FastAPI's worker threads, concurrent launches failed)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = DagsterGraphQLClient(
                self._settings.dagster_host,
                port_number=self._settings.dagster_port,
                timeout=max(1, int(self._settings.dagster_timeout_seconds)),
            )
            self._local.client = client
        return client

    def close(self) -> None:
        self.http.close()

    def query(
        self,
        document: str,
        variables: dict[str, Any],
        attempts: int = 2,
        timeout: float | None = None,
        retry_timeouts: bool = True,
    ) -> Any:
        """POST a GraphQL document; reads are retried once on a dropped connection (and, unless
        `retry_timeouts` is off, once after a timeout)."""
        last: Exception | None = None
        for _ in range(attempts):
            try:
                response = self.http.post(
                    self.url,
                    json={"query": document, "variables": variables},
                    timeout=timeout or self._settings.dagster_timeout_seconds,
                )
            except httpx.TransportError as exc:
                last = exc
                if isinstance(exc, httpx.TimeoutException) and not retry_timeouts:
                    break
                continue
            self.contact = (time.monotonic(), True)
            if response.status_code != 200:
                raise DagsterError(f"Dagster answered HTTP {response.status_code}: {response.text[:300]}")
            body = response.json()
            if body.get("errors"):
                raise DagsterError(f"Dagster GraphQL error: {body['errors'][0].get('message')}")
            return body["data"]
        self.contact = (time.monotonic(), False)
        raise DagsterUnavailable(f"Dagster is not reachable at {self.url}: {last}")

    def client_error(self, exc: DagsterGraphQLClientError) -> DagsterError:
        """What a `DagsterGraphQLClient` failure means to us (and it is remembered as a contact)."""
        cause = exc.__cause__
        if isinstance(
            cause, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, *_GQL_CONNECTION_FAILED)
        ):
            error: DagsterError = DagsterUnavailable(f"Dagster did not answer in time at {self.url}")
        else:
            said = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc.args[-1] if exc.args else exc)
            if code_location_down(said):
                error = DagsterUnavailable(f"Dagster's code location is unavailable: {said[:300]}")
            else:
                error = DagsterError(f"Dagster refused the request: {said[:300]}")
        self.contact = (time.monotonic(), not isinstance(error, DagsterUnavailable))
        return error

    def answered(self) -> None:
        """A call through the client was answered: Dagster is up."""
        self.contact = (time.monotonic(), True)

    # ------------------------------------------------------------------ liveness

    def ping(self, timeout: float | None = 2.0) -> bool:
        """Is Dagster answering? /health uses the short default; starts wait the full timeout.
        A dropped connection is tried once more on a new one: the webserver closes a kept-alive
        connection that sat idle (uvicorn's keep-alive, 5 s), and a request sent on it as it
        closes fails at once; a start after a few idle seconds was answered 503 for it (the
        suite's concurrent starts, CI 2026-12-05). A timeout is not tried again: the full
        timeout is already the wait a start may spend on it."""
        try:
            self.query("{ version }", {}, attempts=2, timeout=timeout, retry_timeouts=False)
            return True
        except DagsterError:
            return False

    def reachable(self, max_age: float) -> bool:
        """Did Dagster answer a call of ours in the last `max_age` seconds, with none unanswered
        since? Else a `ping` (full timeout). What a start asks before storing anything: under
        load the launches answer it for free, where a ping would queue on the busy webserver."""
        contact = self.contact
        if contact is not None and contact[1] and time.monotonic() - contact[0] < max_age:
            return True
        return self.ping(timeout=None)

    def ping_cached(self, ttl: float = 2.0) -> bool:
        """`ping`, at most `ttl` old: /health is open to anyone, and must not be a way to load Dagster."""
        with self._ping_lock:
            if self._last_ping is not None and time.monotonic() - self._last_ping[0] < ttl:
                return self._last_ping[1]
            up = self.ping()
            self._last_ping = (time.monotonic(), up)
            return up
