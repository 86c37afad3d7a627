"""GET /health: Dagster reachability and each ML backend's state."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.deps import RunsDep
from gateway.schemas import HealthResponse

router = APIRouter(tags=["health"])

# The embedded default runs every ML service in-process; issue-4 HTTP clients report online/offline.
LOCAL_SERVICES = {
    "a100": "local",
    "imageManipulator": "local",
    "birefnet": "local",
    "sam3": "local",
    "gemini": "local",
}


@router.get("/health", response_model=HealthResponse)
def health(runs: RunsDep) -> HealthResponse:
    connected = "connected" if runs.ping() else "disconnected"
    return HealthResponse(
        status="healthy" if connected == "connected" else "degraded",
        dagster=connected,
        temporal=connected,
        services=dict(LOCAL_SERVICES),
    )
