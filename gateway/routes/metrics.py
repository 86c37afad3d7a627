"""GET /metrics: Prometheus' text format, behind its own bearer token when API keys are on.

Not one of the API keys: a scraper needs no right to start or read workflows, and a caller's
key must not read load figures. With `GATEWAY_API_KEYS` set, /metrics needs
`Authorization: Bearer <METRICS_API_KEY>` (403 while no METRICS_API_KEY is set); without keys
(loopback, ALLOW_ANONYMOUS) it is open unless METRICS_API_KEY is set. Wrong tokens count against
the address's wrong-key limit, like wrong API keys; the right token is never refused for them.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, Response, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.deps import SettingsDep
from gateway.observability.registry import GatewayMetrics
from gateway.schemas import error_responses
from gateway.security import RateLimits, client_network

router = APIRouter(tags=["operations"])
metrics_token = HTTPBearer(
    auto_error=False, scheme_name="MetricsBearer", description="METRICS_API_KEY, for GET /metrics only."
)


def require_metrics_token(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(metrics_token)],
) -> None:
    expected = settings.metrics_api_key
    if not expected:
        if settings.api_key_list():
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail="/metrics is off while API keys are on and METRICS_API_KEY is unset"
            )
        return
    given = credentials.credentials if credentials else ""
    if hmac.compare_digest(given.encode(), expected.encode()):
        return  # the right token is never refused for someone else's wrong ones
    if given:
        limits: RateLimits = request.app.state.rate_limits
        bucket = f"auth:{client_network(request.client.host if request.client else None)}"
        wait = limits.take(limits.auth_failures, bucket)
        if wait > 0:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                detail="too many requests with a wrong token from this address; retry later",
                headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            )
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail="/metrics needs Authorization: Bearer <METRICS_API_KEY>",
        headers={"WWW-Authenticate": "Bearer"},
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        **error_responses(401, 403, 429),
    },
)
def metrics(request: Request, _: Annotated[None, Security(require_metrics_token)]) -> Response:
    """Gateway and pipeline figures for Prometheus (README, Observability)."""
    registry: GatewayMetrics = request.app.state.metrics
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
