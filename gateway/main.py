"""Builds the FastAPI app: `uvicorn gateway.main:app --port 8001`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from gateway.dagster_runs import DagsterRuns
from gateway.results import ResultReader
from gateway.routes import health, workflows
from gateway.service_health import ServiceProbe
from gateway.settings import GatewaySettings, get_settings
from jewel_dagster.resources import build_blob_store


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or get_settings()
        app.state.settings = resolved
        app.state.store = build_blob_store(resolved, inside_dagster=False)
        app.state.runs = DagsterRuns(resolved)
        app.state.results = ResultReader(app.state.store, timedelta(minutes=resolved.result_url_minutes))
        app.state.probe = ServiceProbe(resolved)
        yield
        app.state.runs.close()

    app = FastAPI(title="jewel-dagster gateway", version="0.1.0", lifespan=lifespan)
    app.include_router(workflows.router)
    app.include_router(health.router)
    return app


app = create_app()
