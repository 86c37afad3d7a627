"""/health's service states against real HTTP answers: the reference README's `online`/`unknown`."""

from __future__ import annotations

import asyncio
import threading

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from gateway.service_health import ServiceProbe
from gateway.settings import GatewaySettings
from tests.support.e2e_stack import free_port
from tests.support.servers import app_in_thread


def _services(release: threading.Event) -> FastAPI:
    app = FastAPI()

    @app.get("/up/health")
    def up() -> str:
        return "ok"

    @app.get("/broken/health")
    def broken() -> PlainTextResponse:
        return PlainTextResponse("model not loaded", status_code=503)

    @app.get("/slow/health")
    async def slow() -> str:  # answers only once the test is done with it (a cold start)
        while not release.is_set():
            await asyncio.sleep(0.01)
        return "ok"

    return app  # /modal/health is not a route: 404, like a Modal endpoint without a health route


def test_a_service_that_cannot_be_probed_reads_unknown_and_a_dead_one_offline() -> None:
    release = threading.Event()
    with app_in_thread(_services(release)) as url:
        try:
            settings = GatewaySettings(
                a100_server_url=f"{url}/up", image_manipulator_url=f"{url}/broken", sam3_url=f"{url}/modal"
            )
            states = ServiceProbe(settings, ttl=0.0, timeout=10.0).states()
            assert states["a100"] == "online"
            assert states["imageManipulator"] == "offline"  # it answered: with an error
            assert states["sam3"] == "unknown"  # reachable, but no health endpoint to ask
            slow = GatewaySettings(birefnet_url=f"{url}/slow")
            # no answer in time: not known to be down
            assert ServiceProbe(slow, ttl=0.0, timeout=0.2).states()["birefnet"] == "unknown"
        finally:
            release.set()
    nobody = GatewaySettings(sam3_url=f"http://127.0.0.1:{free_port()}")
    assert ServiceProbe(nobody, ttl=0.0, timeout=10.0).states()["sam3"] == "offline"  # connection refused


def test_the_probes_are_reused_for_health_cache_seconds() -> None:
    """HEALTH_CACHE_SECONDS sets how long answers are reused (the end-to-end test of the probes
    sets it short rather than wait 5 s for a change to show)."""
    down = threading.Event()
    app = FastAPI()

    @app.get("/a100/health")
    def health() -> PlainTextResponse:
        return PlainTextResponse("down" if down.is_set() else "ok", status_code=503 if down.is_set() else 200)

    with app_in_thread(app) as url:
        # (a probe timeout of 10 s: on a loaded machine the 1 s default could read "unknown")
        cached = ServiceProbe(GatewaySettings(a100_server_url=f"{url}/a100"), timeout=10.0)
        fresh = ServiceProbe(GatewaySettings(a100_server_url=f"{url}/a100", health_cache_seconds=0.0), timeout=10.0)
        assert fresh.states()["a100"] == "online"
        assert cached.states()["a100"] == "online"
        down.set()
        assert cached.states()["a100"] == "online"  # the default (5 s): the answer of a moment ago
        assert fresh.states()["a100"] == "offline"
