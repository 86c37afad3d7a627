"""One attempt of a webhook: the URL checked again, the POST signed and bounded, the answer judged."""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from typing import Literal

import httpx

from gateway.bounded_post import bounded_post
from gateway.settings import GatewaySettings
from gateway.webhooks import (
    PinnedTransport,
    WebhookRefused,
    WebhookUnresolved,
    caller_secret,
    check_webhook_url,
    signed_headers,
)

Verdict = Literal["delivered", "retry", "refused"]
USER_AGENT = "jewel-dagster-webhooks/3"
_RETRIED_4XX = (408, 425, 429)  # "wait and ask again": retried like a 5xx


@dataclass(frozen=True)
class Attempt:
    """What one POST came to: delivered (2xx), to be retried (5xx, 408/425/429, network, DNS) or
    refused for good (another 4xx, a URL that now points somewhere forbidden)."""

    verdict: Verdict
    status_code: int | None
    error: str | None


def event_header(event: str) -> str:
    """`X-Jewel-Event`: `workflow.finished` for the final events, as before events could be chosen
    (the body's `status` tells completed, failed and cancelled apart), `workflow.<event>` otherwise."""
    return "workflow.finished" if event in ("completed", "failed", "cancelled") else f"workflow.{event}"


def _post(settings: GatewaySettings, verify: ssl.SSLContext | bool, url: str, addresses: list[str],
          body: bytes, headers: dict[str, str]) -> int:  # fmt: skip
    """One POST to one of `addresses`, on the transport itself: httpx's client would log the full
    URL (its credentials and query) and follow proxies from the environment. Credentials in the URL
    become Basic auth, as a client would send them. The whole POST ends within
    WEBHOOK_TIMEOUT_SECONDS and reads a few KB of the answer at most (bounded_post.py)."""
    target = httpx.URL(url)
    headers = dict(headers)
    if target.username or target.password:
        pair = f"{target.username}:{target.password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    request = httpx.Request("POST", target.copy_with(username=None, password=None), content=body, headers=headers)
    with PinnedTransport(addresses, verify) as transport:
        return bounded_post(transport, request, settings.webhook_timeout_seconds)


def send_once(
    settings: GatewaySettings,
    url: str,
    body: bytes,
    message_id: str,
    caller: str,
    event: str,
    now: float,
    verify: ssl.SSLContext | bool = True,
) -> Attempt:
    """POST `body` once, signed with `caller`'s secret at time `now` (each attempt is signed again,
    so a late retry passes a receiver's 5-minute window) under the same `webhook-id`."""
    headers = {
        "Content-Type": "application/json",
        "X-Jewel-Event": event_header(event),
        "User-Agent": USER_AGENT,
    }
    try:
        # DNS may have changed since the submission: check again, and connect to what was checked.
        addresses = check_webhook_url(url, settings.webhook_allow_private, caller)
        secret = caller_secret(settings.webhook_secret, caller)
        status_code = _post(
            settings, verify, url, addresses, body, {**headers, **signed_headers(secret, message_id, body, now)}
        )
    except WebhookUnresolved as exc:  # the name server, not the URL: try again
        return Attempt("retry", None, str(exc))
    except WebhookRefused as exc:
        return Attempt("refused", None, str(exc))
    except httpx.HTTPError as exc:
        return Attempt("retry", None, f"{type(exc).__name__}: {exc}"[:300])
    if 200 <= status_code < 300:
        return Attempt("delivered", status_code, None)
    if 400 <= status_code < 500 and status_code not in _RETRIED_4XX:
        return Attempt("refused", status_code, f"the receiver refused it: HTTP {status_code}")
    return Attempt("retry", status_code, f"HTTP {status_code}")
