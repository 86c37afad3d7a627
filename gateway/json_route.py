"""Routes whose large JSON bodies are parsed on a worker thread, not on the event loop.

FastAPI parses a body with `await request.json()`, a plain `json.loads` on the event loop: a 25 MB
photo body held every other request and event stream for the length of the parse. This is
FastAPI's documented way to change how a route reads its request (a custom `APIRoute` handing
the handler a `Request` subclass).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from fastapi import Request, Response
from fastapi.routing import APIRoute

from gateway.security import OFF_LOOP_BYTES


class OffLoopJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) > OFF_LOOP_BYTES:
                self._json = await anyio.to_thread.run_sync(json.loads, body)
            else:
                self._json = json.loads(body)
        return self._json


class OffLoopJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(OffLoopJSONRequest(request.scope, request.receive))

        return handler if self.body_field is None else handle
