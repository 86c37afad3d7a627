"""Who may call the API, how often, and how much they may send.

- API keys (`GATEWAY_API_KEYS`): when set, every /workflow call needs one, as `X-API-Key` or
  `Authorization: Bearer` (FastAPI security schemes, so the OpenAPI document shows both). A
  caller is known by an HMAC of its key under `GATEWAY_SECRET`, never the key itself: runs are
  tagged with it, and a leaked tag cannot be tested against guessed keys without the secret.
  Without keys the gateway refuses to start unless `ALLOW_ANONYMOUS=true` (`make run` sets it).
- `Gatekeeper` checks the key (from the headers) and takes the rate limit before anything reads
  the body: a request without a valid key costs a header lookup, whatever body it carries (a 25 MB
  body of nested arrays cost 8 s and +640 MB when the key was checked after parsing).
- Rate limits on the `limits` library (memory, or Redis when `REDIS_URL` is set, so replicas
  share them): `RATE_LIMIT_PER_MINUTE` per caller (per key, or per address without keys: an
  IPv6 client counts by its /64, which one host can rotate through), and
  `AUTH_FAILURES_PER_MINUTE` wrong keys per address. A valid key is never refused because of
  wrong keys: behind a load balancer every caller may share one address. 429 with `Retry-After`.
  The address is the peer's, or `X-Forwarded-For`'s when the peer is one of `FORWARDED_ALLOW_IPS`.
- Body size and shape: `BodyLimitMiddleware` refuses a body over `MAX_BODY_BYTES` (routes that take
  a photo) or `MAX_SMALL_BODY_BYTES` (the others), or whose JSON has more than `MAX_JSON_OBJECTS`
  objects and arrays, `MAX_JSON_ITEMS` items or `MAX_JSON_DEPTH` levels, counted on the raw bytes
  before anything parses them (gateway/json_shape.py).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.json_shape import json_shape_problem
from gateway.settings import GatewaySettings

ANONYMOUS = "anonymous"
CALLER_STATE = "jewel_caller"  # where Gatekeeper leaves the caller in the ASGI scope's state
log = logging.getLogger("gateway.security")


def caller_id(api_key: str, secret: str) -> str:
    """What runs are tagged with: a keyed hash, so Dagster's UI and logs never show a key."""
    return hmac.new(secret.encode(), api_key.encode(), hashlib.sha256).hexdigest()[:24]


def client_network(host: str | None) -> str:
    """The address a limit counts by: an IPv4 address, or an IPv6 client's /64."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return host or ANONYMOUS
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class RateLimits:
    """The gateway's limits, counted in a `limits` storage: `memory://` or Redis.

    Memory storage expires idle counters by itself, so a crowd of addresses costs nothing once
    it went quiet; Redis shares the counts between gateway replicas. A storage that fails
    (Redis down) lets requests through and says so in the log: the limits protect the service,
    they must not take it down.
    """

    def __init__(self, settings: GatewaySettings) -> None:
        uri = settings.redis_url or "memory://"
        options: dict[str, float | str | bool] = {}
        if uri.startswith(("redis://", "rediss://")):
            options = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
        self._limiter = SlidingWindowCounterRateLimiter(storage_from_string(uri, **options))
        self.remote = uri != "memory://"  # a network call per count: not on the event loop
        self.calls = RateLimitItemPerMinute(settings.rate_limit_per_minute)
        self.auth_failures = RateLimitItemPerMinute(settings.auth_failures_per_minute)

    def take(self, item: RateLimitItem, key: str, cost: int = 1) -> float:
        """0 when the call is allowed (and counted, `cost` times), else the seconds until one is."""
        try:
            if self._limiter.hit(item, key, cost=cost):
                return 0.0
            reset = self._limiter.get_window_stats(item, key).reset_time
        except Exception as exc:  # noqa: BLE001 - any storage failure: fail open, loudly
            log.warning("rate limit storage failed (%s: %s); request let through", type(exc).__name__, exc)
            return 0.0
        return max(1.0, reset - time.time())

    def exhausted(self, item: RateLimitItem, key: str, cost: int = 1) -> float:
        """Like `take`, without counting: the seconds until the next call is allowed, or 0."""
        try:
            if self._limiter.test(item, key, cost=cost):
                return 0.0
            reset = self._limiter.get_window_stats(item, key).reset_time
        except Exception as exc:  # noqa: BLE001
            log.warning("rate limit storage failed (%s: %s); request let through", type(exc).__name__, exc)
            return 0.0
        return max(1.0, reset - time.time())

    def used(self, item: RateLimitItem, key: str) -> int:
        """How much of `item` the key used in the current window (0 when the storage fails)."""
        try:
            return item.amount - self._limiter.get_window_stats(item, key).remaining
        except Exception as exc:  # noqa: BLE001
            log.warning("rate limit storage failed (%s: %s)", type(exc).__name__, exc)
            return 0


def _too_many(what: str, wait: float) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail=f"{what}; retry later",
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )


api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="One of GATEWAY_API_KEYS.")
bearer_token = HTTPBearer(auto_error=False, description="One of GATEWAY_API_KEYS, as a bearer token.")


def given_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: `X-API-Key`, else `Authorization: Bearer`."""
    if (key := headers.get("x-api-key")) is not None:
        return key
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def identify(settings: GatewaySettings, limits: RateLimits, given: str | None, host: str | None) -> str:
    """The caller's id (or "anonymous" when no keys are configured), its call counted; 401/429 otherwise.

    A valid key is checked first and never looks at the wrong-key count: behind a load balancer
    all callers share an address, and someone else's wrong keys must not lock a valid key out.
    Wrong keys are counted per address; once over the limit, that address gets 429 for them."""
    network = client_network(host)
    keys = settings.api_key_list()
    if keys:
        if not given or not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
            if given:
                wait = limits.take(limits.auth_failures, f"auth:{network}")
                if wait > 0:
                    raise _too_many("too many requests with a wrong API key from this address", wait)
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="a valid API key is required (X-API-Key header or Authorization: Bearer)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        caller = caller_id(given, settings.gateway_secret)
        bucket = f"caller:{caller}"
    else:
        caller = ANONYMOUS
        bucket = f"address:{network}"
    wait = limits.take(limits.calls, bucket)
    if wait > 0:
        raise _too_many(f"rate limit of {settings.rate_limit_per_minute} requests a minute reached", wait)
    return caller


async def authenticate(
    request: Request,
    api_key: Annotated[str | None, Security(api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_token)],
) -> str:
    """The caller `Gatekeeper` identified before the body was read; the schemes above document
    the key's two headers in OpenAPI. A route outside the gatekeeper's paths identifies here.

    `async def`: a plain `def` dependency costs a worker-thread hand-off on every request, for what
    is a dictionary read once the gatekeeper identified the caller."""
    known = request.scope.get("state", {}).get(CALLER_STATE)
    if isinstance(known, str):
        return known
    given = api_key if api_key is not None else (bearer.credentials if bearer else None)
    host = request.client.host if request.client else None
    state = request.app.state
    if state.rate_limits.remote:  # Redis: a round trip off the loop, as in Gatekeeper
        return await anyio.to_thread.run_sync(identify, state.settings, state.rate_limits, given, host)
    return identify(state.settings, state.rate_limits, given, host)


CallerDep = Annotated[str, Depends(authenticate)]


def refuse_to_start_open(settings: GatewaySettings) -> None:
    """An API without keys is open to anyone who can reach it: only when asked for, and loudly."""
    if settings.api_key_list():
        if len(settings.gateway_secret) < 16:
            raise RuntimeError(
                "GATEWAY_SECRET must be set (16+ characters, random) when GATEWAY_API_KEYS is: "
                "callers are known by a keyed hash of their key"
            )
        return
    if not settings.allow_anonymous:
        raise RuntimeError(
            "no GATEWAY_API_KEYS configured: the API would be open to anyone who can reach it. "
            "Set GATEWAY_API_KEYS (and GATEWAY_SECRET), or ALLOW_ANONYMOUS=true for a machine "
            "nobody else can reach (make run does)."
        )
    log.warning(
        "ANONYMOUS ACCESS: no API keys configured and ALLOW_ANONYMOUS=true; anyone who reaches "
        "this gateway can start, read and cancel every workflow"
    )


class Gatekeeper:
    """Authenticates and rate-limits the API's requests from their headers, before the body is read.

    FastAPI reads and parses a body before it resolves any dependency, the key check included: a
    request without a key got its 401 only after its body was parsed. Here the key is checked
    first, so a refused request costs a header lookup; the caller is left in the scope's state
    for `authenticate`. Preflights (OPTIONS) pass: CORS answers them without a key.
    """

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        client = scope.get("client")
        state = scope["app"].state  # the lifespan's settings and limits
        args = (state.settings, state.rate_limits, given_key(headers), client[0] if client else None)
        try:
            if state.rate_limits.remote:  # Redis: a round trip (up to its 0.5 s timeout) off the loop
                caller = await anyio.to_thread.run_sync(identify, *args)
            else:
                caller = identify(*args)
        except HTTPException as exc:
            await _answer(send, exc.status_code, str(exc.detail), exc.headers or {})
            return
        scope.setdefault("state", {})[CALLER_STATE] = caller
        await self.app(scope, receive, send)


# Bodies above this are checked and parsed on a worker thread: the event loop keeps answering.
OFF_LOOP_BYTES = 256 * 1024


class BodyLimitMiddleware:
    """413 for a body over its route's limit, or of too many JSON objects, before the app parses it.

    Only the routes that take a photo (`upload_paths`) may send `limit` bytes; every other body
    is small JSON (`small_limit`). A declared Content-Length decides at once; a chunked body is
    counted while it arrives and dropped once it passes the limit.

    Parsing costs per object and item, not per byte: 22 MB of stroke points took 1.5 GB and 9 s
    to parse and validate, 25 MB of nested empty arrays 8 s and 640 MB, within the byte limit. So
    the body's containers, items and depth are counted on the raw bytes first (a base64 photo has
    none of them), on a worker thread for a large body.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        small_limit: int,
        max_objects: int,
        upload_paths: frozenset[str],
        max_items: int = 100_000,
        max_depth: int = 16,
    ) -> None:
        self.app = app
        self.limit = limit
        self.small_limit = small_limit
        self.max_objects = max_objects
        self.max_items = max_items
        self.max_depth = max_depth
        self.upload_paths = upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit if scope["path"] in self.upload_paths else self.small_limit
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _refuse(send, f"request body is larger than {_size(limit)}")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(send, f"request body is larger than {_size(limit)}")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        if len(body) > OFF_LOOP_BYTES:
            problem = await anyio.to_thread.run_sync(self._shape_problem, body)
        else:
            problem = self._shape_problem(body)
        if problem is not None:
            await _refuse(send, problem)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _shape_problem(self, body: bytes) -> str | None:
        return json_shape_problem(body, self.max_objects, self.max_items, self.max_depth)


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MB" if limit >= 1024 * 1024 else f"{limit // 1024} KB"


async def _refuse(send: Send, detail: str) -> None:
    await _answer(send, 413, detail)


async def _answer(send: Send, code: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
    """A JSON `{"detail": ...}` answer, as FastAPI's HTTPException gives, from an ASGI middleware."""
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
