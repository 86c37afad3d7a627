"""Builds the FastAPI app: `python -m gateway` (API_PORT, BIND_HOST), or `uvicorn gateway.main:app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gateway.bounded_reads import BoundedReads
from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.queue_estimates import QueueEstimates
from gateway.event_streams import EventStreams
from gateway.observability.dagster_figures import DagsterFigures
from gateway.observability.logs import configure_logging
from gateway.observability.middleware import ObservabilityMiddleware
from gateway.observability.registry import GatewayMetrics
from gateway.provenance import provenance_mode
from gateway.quotas import Quotas
from gateway.results import ResultReader
from gateway.routes import artifacts, events, health, metrics, page, usage, webhooks, workflows
from gateway.security import BodyLimitMiddleware, Gatekeeper, RateLimits, refuse_to_start_open
from gateway.service_health import ServiceProbe
from gateway.settings import GatewaySettings, get_settings
from gateway.shutdown import drain_streams_on_signals
from gateway.starts import StartLauncher
from gateway.state_bodies import FinishedBodies
from gateway.webhook_outbox.watcher import WebhookDispatcher
from jewel_dagster.resources.selection import build_blob_store
from jewel_dagster.tracing import configure_tracing

# GET reads left blocked on a stalled storage (gateway/bounded_reads.py): anyio's default thread
# pool is 40, so at most as many threads again wait out an outage.
STALLED_STATE_READS = 40


def _field(loc: tuple[Any, ...]) -> str:
    """('body', 'maskPoints', 0, 'x') -> 'maskPoints[0].x': the field as the frontend names it."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _field(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return JSONResponse(status_code=422, content={"detail": detail, "errors": errors[:50]})


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    resolved = settings or get_settings()
    observed = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(resolved.log_format, resolved.log_level)
        refuse_to_start_open(resolved)
        configure_tracing("jewel-gateway")  # only with an OTLP endpoint in the environment
        figures = DagsterFigures(resolved.metrics_cache_seconds)
        observed.registry.register(figures)
        app.state.dagster_figures = figures
        app.state.settings = resolved
        app.state.store = build_blob_store(resolved, inside_dagster=False)
        app.state.runs = DagsterRuns(resolved)
        # One refresher a process: GET and the streams only look its snapshot up.
        estimates = None
        if resolved.status_source == "storage" and resolved.queue_estimate_seconds > 0:
            reader = app.state.runs.reader
            estimates = QueueEstimates(resolved.queue_estimate_seconds, lambda: reader.instance)
            estimates.start()
        app.state.queue_estimates = estimates
        app.state.results = ResultReader(
            app.state.store, timedelta(minutes=resolved.result_url_minutes), url_base=resolved.result_url_base
        )
        app.state.finished_bodies = FinishedBodies(
            int(resolved.state_body_cache_mb * 1024 * 1024), resolved.state_body_max_age()
        )
        app.state.state_reads = BoundedReads(STALLED_STATE_READS)
        app.state.probe = ServiceProbe(resolved)
        app.state.provenance = provenance_mode(resolved)
        app.state.rate_limits = RateLimits(resolved)
        app.state.quotas = Quotas(resolved, app.state.rate_limits)
        app.state.event_streams = EventStreams(
            resolved.event_poll_seconds, resolved.event_streams_per_caller, resolved.event_streams_total
        )
        restore_signals = drain_streams_on_signals(app.state.event_streams)
        dispatcher = None
        if resolved.webhook_secret:
            dispatcher = WebhookDispatcher(
                resolved, app.state.runs, app.state.results, app.state.store, on_delivery=observed.webhook_ended
            )
            dispatcher.start()
        # Started in either mode: it also takes over the pending starts other gateways left.
        launcher = StartLauncher(
            resolved,
            app.state.store,
            lambda: app.state.runs,
            on_ended=dispatcher.deliver_unlaunched_start if dispatcher is not None else None,
        )
        app.state.launcher = launcher
        observed.pending_starts.set_function(launcher.pending)
        launcher.start()
        yield
        restore_signals()
        await app.state.event_streams.close()
        await run_in_threadpool(launcher.stop)  # queued starts launched, or left for a takeover
        if dispatcher is not None:
            dispatcher.stop()
        if estimates is not None:  # before the storage it reads is closed
            await run_in_threadpool(estimates.close)
        app.state.runs.close()
        observed.registry.unregister(figures)
        figures.close()

    docs = resolved.api_docs == "on"
    app = FastAPI(
        title="jewel-dagster gateway",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs else None,  # None: no /openapi.json, /docs or /redoc
    )
    app.state.metrics = observed
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(events.router)
    app.include_router(artifacts.router)
    app.include_router(workflows.router)
    app.include_router(webhooks.router)
    app.include_router(usage.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    page.mount(app)
    # Outermost first, as a request meets them: observability (sees every answer), the client's
    # address, CORS (answers preflights), the key, the body.
    app.add_middleware(
        BodyLimitMiddleware,
        limit=resolved.max_body_bytes,
        small_limit=resolved.max_small_body_bytes,
        max_objects=resolved.max_json_objects,
        max_items=resolved.max_json_items,
        max_depth=resolved.max_json_depth,
        upload_paths=frozenset({"/workflow/start", "/workflow/preprocess"}),
    )
    app.add_middleware(Gatekeeper, prefixes=("/workflow", "/webhooks", "/usage"))  # before the body is read
    if resolved.cors_origin_list():
        app.add_middleware(
            CORSMiddleware,
            allow_origins=resolved.cors_origin_list(),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "Idempotency-Key"],
        )
    if proxies := [p.strip() for p in resolved.forwarded_allow_ips.split(",") if p.strip()]:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=proxies)  # X-Forwarded-For from these only
    app.add_middleware(ObservabilityMiddleware, metrics=observed)  # outermost: sees every answer, 413s too
    return app


app = create_app()
