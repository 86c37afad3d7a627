"""One ASGI middleware for every call: its correlation id, its metrics and its log line.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: event streams pass through unbuffered,
and the status is read from the response start message. The route label is the matched
route's template (`/workflow/{workflow_id}`), never the raw path, so ids do not multiply series;
anything no route matched is `unmatched`, and so is a body refused before routing (the 413s of
BodyLimitMiddleware, inside this one).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gateway.observability import logs
from gateway.observability.registry import GatewayMetrics

REQUEST_ID_HEADER = "X-Request-ID"
log = logging.getLogger("gateway.http")
_QUIET = frozenset({"/metrics", "/health"})  # scraped and probed every few seconds: not logged at INFO


def route_of(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path or "/"
    return "unmatched"


class ObservabilityMiddleware:
    def __init__(self, app: Any, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = logs.request_id_from(header)
        context = logs.start_request(request_id)
        started = time.perf_counter()
        status = 500  # unless the app starts a response

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = route_of(scope)
            method = scope["method"]
            self.metrics.http_requests.labels(method, route, str(status)).inc()
            self.metrics.http_duration.labels(method, route).observe(seconds)
            workflow_id = (scope.get("path_params") or {}).get("workflow_id")
            if workflow_id and "workflowId" not in context:
                context["workflowId"] = str(workflow_id)[:100]
            level = logging.DEBUG if route in _QUIET and status < 400 else logging.INFO
            log.log(
                level,
                "%s %s %s",
                method,
                route,
                status,
                extra=logs.fields(method=method, route=route, status=status, seconds=round(seconds, 4)),
            )
