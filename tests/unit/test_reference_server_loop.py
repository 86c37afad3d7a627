"""The reference server's Gemini stand-in does its image work off the event loop, as every other
endpoint does: on the loop it held up the other services' answers (Flux's answer by up to a
second on a loaded machine, `benchmarks.critical_path --timeline`, issue 28). No timing: the
Gemini call's image work waits until another call was answered, which a blocked loop cannot do.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest

from devtools import reference_server
from devtools.reference_server import Knobs, ServerState, create_app
from jewel_dagster.vision import imaging

WAIT = 10.0  # what a blocked loop costs the test before it fails


def test_gemini_image_work_leaves_the_event_loop_free(monkeypatch: pytest.MonkeyPatch) -> None:
    inside, other_answered = threading.Event(), threading.Event()
    seen: dict[str, bool] = {}
    backdrop = reference_server.classical.studio_background

    def waiting_backdrop(*args: Any, **kwargs: Any) -> Any:
        inside.set()
        seen["another call answered meanwhile"] = other_answered.wait(timeout=WAIT)
        return backdrop(*args, **kwargs)

    monkeypatch.setattr(reference_server.classical, "studio_background", waiting_backdrop)
    app = create_app(ServerState(Knobs(), instant=True))
    image = np.full((8, 6, 3), 100, np.uint8)
    data = base64.urlsafe_b64encode(imaging.encode_png(image)).decode("ascii")
    body = {"contents": [{"parts": [{"text": "studio"}, {"inlineData": {"mimeType": "image/png", "data": data}}]}]}

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://reference") as client:
            gemini = asyncio.create_task(client.post("/gemini/v1beta/models/m:generateContent", json=body))
            deadline = time.monotonic() + WAIT
            while not inside.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            health = await client.get("/sam3/health")
            other_answered.set()
            return await gemini, health

    gemini, health = asyncio.run(scenario())
    assert health.status_code == 200 and gemini.status_code == 200
    assert seen == {"another call answered meanwhile": True}, "the Gemini stand-in blocked the event loop"
