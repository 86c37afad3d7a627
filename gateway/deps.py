"""FastAPI dependencies: the clients the lifespan built, as annotated aliases.

`async def`: FastAPI runs a plain `def` dependency on a worker thread, a hand-off (~0.1-0.3 ms of
CPU under load) per dependency per request for an attribute read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.queue_estimates import QueueEstimates
from gateway.event_streams import EventStreams
from gateway.quotas import Quotas
from gateway.results import ResultReader
from gateway.service_health import ServiceProbe
from gateway.settings import GatewaySettings
from gateway.starts import StartLauncher
from jewel_dagster.provenance.signer import ProvenanceMode
from jewel_dagster.resources.blob_store import BlobStore


async def _settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


async def _runs(request: Request) -> DagsterRuns:
    return request.app.state.runs


async def _store(request: Request) -> BlobStore:
    return request.app.state.store


async def _results(request: Request) -> ResultReader:
    return request.app.state.results


async def _probe(request: Request) -> ServiceProbe:
    return request.app.state.probe


async def _provenance(request: Request) -> ProvenanceMode:
    return request.app.state.provenance


async def _launcher(request: Request) -> StartLauncher:
    return request.app.state.launcher


async def _quotas(request: Request) -> Quotas:
    return request.app.state.quotas


async def _event_streams(request: Request) -> EventStreams:
    return request.app.state.event_streams


def _queue_estimates(request: Request) -> QueueEstimates | None:
    return getattr(request.app.state, "queue_estimates", None)


SettingsDep = Annotated[GatewaySettings, Depends(_settings)]
RunsDep = Annotated[DagsterRuns, Depends(_runs)]
StoreDep = Annotated[BlobStore, Depends(_store)]
ResultsDep = Annotated[ResultReader, Depends(_results)]
ProbeDep = Annotated[ServiceProbe, Depends(_probe)]
ProvenanceDep = Annotated[ProvenanceMode, Depends(_provenance)]
LauncherDep = Annotated[StartLauncher, Depends(_launcher)]
EventStreamsDep = Annotated[EventStreams, Depends(_event_streams)]
QuotasDep = Annotated[Quotas, Depends(_quotas)]
EstimatesDep = Annotated[QueueEstimates | None, Depends(_queue_estimates)]
