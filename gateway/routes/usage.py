"""GET /usage: the caller's own figures against its quotas (gateway/quotas.py)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from gateway.dagster_api.errors import DagsterError
from gateway.deps import QuotasDep, RunsDep, SettingsDep
from gateway.schemas import AUTHENTICATED, error_responses
from gateway.security import CallerDep
from gateway.workflows.errors import pipeline_unavailable
from jewel_dagster.contract import OWNER_TAG

router = APIRouter(tags=["usage"])


class Usage(BaseModel):
    runsInFlight: int = Field(description="This key's runs queued or running now.")
    runsInFlightLimit: int = Field(description="Runs of one key that run at once; the rest wait in the queue.")
    workflowsToday: int = Field(description="Workflows this key started in the last 24 hours.")
    workflowsPerDay: int = Field(description="Workflows a key may start in 24 hours; 429 beyond.")
    bytesStored: int = Field(description="Bytes of photos this key uploaded within the retention window.")
    bytesStoredLimit: int = Field(description="Bytes a key may have stored; 429 beyond.")


@router.get("/usage", response_model=Usage, responses=error_responses(*AUTHENTICATED, 502, 503))
async def usage(
    caller: CallerDep, runs: RunsDep, quotas: QuotasDep, settings: SettingsDep, response: Response
) -> Usage:
    """This API key's runs in flight, workflows of the last 24 hours and bytes stored, with their limits."""
    try:
        in_flight = await run_in_threadpool(runs.runs_in_flight, {OWNER_TAG: caller})
    except DagsterError as exc:
        raise pipeline_unavailable(exc) from exc
    today, stored = quotas.used(caller)
    response.headers["Cache-Control"] = "no-store"
    return Usage(
        runsInFlight=in_flight,
        runsInFlightLimit=settings.runs_in_flight_per_caller,
        workflowsToday=today,
        workflowsPerDay=quotas.workflows.amount,
        bytesStored=stored,
        bytesStoredLimit=quotas.stored.amount,
    )
