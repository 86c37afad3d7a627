"""Probes each configured model service's health endpoint, cached for a few seconds.

/health may be polled by load balancers every second; probing four services on each call
would multiply that load onto the GPU machines, so answers are cached for `ttl` seconds
(HEALTH_CACHE_SECONDS, 5 s; the end-to-end test of the probes shortens it).

States, as the reference README uses them: `online` (its /health answered 200), `offline` (nothing
answers at the address, or it answers /health with an error), `unknown` (the service cannot be
probed: it has no /health we may call, e.g. SAM3 and BiRefNet on Modal answer 404, or the probe
timed out, as a cold-starting Modal container does), `local` (no URL: the in-process stand-in).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from gateway.schemas import ServiceState
from gateway.settings import GatewaySettings

# Answers that say the service is there but has no health endpoint we may call.
_NOT_PROBEABLE = frozenset({401, 403, 404, 405, 501})


class ServiceProbe:
    def __init__(self, settings: GatewaySettings, ttl: float | None = None, timeout: float = 1.0) -> None:
        """`ttl`: how long answers are reused; HEALTH_CACHE_SECONDS (5 s) unless given."""
        self._urls = settings.service_urls()
        self._gemini = _gemini_state(settings)
        self._ttl = settings.health_cache_seconds if ttl is None else ttl
        self._timeout = timeout
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, ServiceState]] | None = None

    def states(self) -> dict[str, ServiceState]:
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self._ttl:
                return dict(self._cached[1])
        configured = {name: url for name, url in self._urls.items() if url}
        states: dict[str, ServiceState] = {name: "local" for name, url in self._urls.items() if not url}
        if configured:
            with ThreadPoolExecutor(max_workers=len(configured)) as pool:
                results = pool.map(self._probe, configured.values())
                states.update(zip(configured, results, strict=True))
        ordered = {name: states[name] for name in self._urls}
        ordered["gemini"] = self._gemini
        with self._lock:
            self._cached = (time.monotonic(), ordered)
        return dict(ordered)

    def _probe(self, url: str) -> ServiceState:
        try:
            response = httpx.get(f"{url.rstrip('/')}/health", timeout=self._timeout)
        except httpx.TimeoutException:
            return "unknown"  # no answer within the probe's timeout is not proof that it is down
        except httpx.HTTPError:
            return "offline"
        if response.status_code == 200:
            return "online"
        return "unknown" if response.status_code in _NOT_PROBEABLE else "offline"


def _gemini_state(settings: GatewaySettings) -> ServiceState:
    backend = settings.gemini_backend
    if backend == "google":
        return "unknown"  # Google's API has no health endpoint we may poll
    return "local" if backend == "local" else "offline"
