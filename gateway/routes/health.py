"""GET /health: Dagster reachability and each model service's state."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from gateway.deps import ProbeDep, ProvenanceDep, RunsDep
from gateway.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse)
def health(runs: RunsDep, probe: ProbeDep, provenance: ProvenanceDep) -> HealthResponse:
    """Open to everyone and free of secrets: states only, no URLs or keys."""
    up = runs.ping_cached()
    connected: Literal["connected", "disconnected"] = "connected" if up else "disconnected"
    return HealthResponse(
        status="healthy" if up else "degraded",
        dagster=connected,
        temporal=connected,
        services=probe.states(),
        provenance=provenance,
    )
