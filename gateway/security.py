"""Who may call the API, how often, and how much they may send.

- API keys (`GATEWAY_API_KEYS`): when set, every /workflow call needs one, as `X-API-Key` or
  `Authorization: Bearer`. A caller is known by a hash of its key, never the key itself; runs
  are tagged with it so a caller reads and cancels only its own workflows.
- Rate limit per caller: a token bucket (`RATE_LIMIT_PER_MINUTE`), 429 with `Retry-After`.
- Body size: `BodyLimitMiddleware` refuses a body over `MAX_BODY_BYTES` before reading it whole,
  from Content-Length when given and while streaming otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
import time
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.settings import GatewaySettings

ANONYMOUS = "anonymous"


def caller_id(api_key: str) -> str:
    """What runs are tagged with: a hash, so Dagster's UI and logs never show a key."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:24]


class TokenBuckets:
    """One bucket per caller: `rate` tokens a minute, holding at most `rate` (a minute's burst)."""

    def __init__(self, per_minute: int) -> None:
        self._rate = per_minute / 60.0
        self._capacity = float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (self._capacity, now))
            tokens = min(self._capacity, tokens + (now - stamp) * self._rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self._rate


def authenticate(
    request: Request,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str:
    """The caller's id (or "anonymous" when no keys are configured); 401/429 otherwise."""
    settings: GatewaySettings = request.app.state.settings
    keys = settings.api_key_list()
    if keys:
        given = x_api_key
        if given is None and authorization and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if not given or not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="a valid API key is required (X-API-Key header or Authorization: Bearer)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        caller = caller_id(given)
        bucket = caller
    else:
        caller = ANONYMOUS
        bucket = request.client.host if request.client else ANONYMOUS
    wait = request.app.state.rate_limits.take(bucket)
    if wait > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"rate limit of {settings.rate_limit_per_minute} requests a minute reached; retry later",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return caller


CallerDep = Annotated[str, Depends(authenticate)]


class BodyLimitMiddleware:
    """Answer 413 for bodies over `limit` bytes before the app reads them.

    A declared Content-Length decides at once (the server stops reading at that length); a
    chunked body is counted while it arrives and dropped once it passes the limit.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(send, self.limit)
            return
        if declared is not None:
            await self.app(scope, receive, send)  # within the limit, and the server enforces the length
            return
        # No length given (chunked): read at most `limit` bytes, then hand the body on.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _too_large(send, self.limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"detail": f"request body is larger than {limit // (1024 * 1024)} MB"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
