"""Webhooks: the final state of a workflow POSTed to the caller's URL, signed, retried.

The full URL may carry credentials (`user:pass@`) or a token in its query, so it is stored only
where the dispatcher reads it: a blob `webhooks/<key>.json`, written when the run is launched,
whose key rides on the run as a tag beside a redacted URL (scheme, host and port only) for people
reading Dagster's UI. Each delivery leaves a record (with the redacted URL) in the blob store next
to the request's artifacts. So a gateway that restarts finds what it still owes from Dagster and
the store alone, and a receiver gets one POST per workflow run, not one per gateway life.

Signatures follow Standard Webhooks (https://www.standardwebhooks.com): `webhook-id` (the run id,
the same on every retry), `webhook-timestamp` (unix seconds of this attempt) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, made with the
`standardwebhooks` library. Each caller has a secret of its own, derived from WEBHOOK_SECRET and
its caller id (`caller_secret`), which it reads with `GET /webhooks/secret` and its API key; the
dispatcher derives it again from the run's owner tag, so nothing per caller is configured or
stored. Receivers verify the signature, refuse timestamps more than 5 minutes off and remember
the ids they accepted (README, "Security").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook as StandardWebhook

from gateway.security import ANONYMOUS
from jewel_dagster.contract import (
    WEBHOOK_KEY_TAG,
    WEBHOOK_TAG,
    WEBHOOK_URL_TAG,
)
from jewel_dagster.resources.blob_store import BlobStore
from jewel_dagster.storage_layout import webhook_url_path

log = logging.getLogger(__name__)

_SECRET_PREFIX = "whsec_"  # how Standard Webhooks writes a secret: whsec_<base64 of the key>
_RESOLVE_SECONDS = 5.0


class WebhookRefused(ValueError):
    """The URL may not receive webhooks; the message is meant for the person who sent it."""


class WebhookUnresolved(WebhookRefused):
    """The host did not resolve, or not in time: refused at submission, retried at delivery (a
    name server's bad minute is not the URL's fault)."""


class _Resolver:
    """Host names looked up per caller, each lookup with a deadline.

    `getaddrinfo` cannot be cancelled, so a slow name holds its thread until the system resolver
    gives up. On a shared pool of 4 threads, one caller's slow names made every other caller's
    URLs "cannot be resolved". Here each lookup has a thread of its own, and holds one of its
    caller's `per_caller` places (and one of `total`) until it really ends: a caller's slow names
    delay only that caller's lookups, and the threads they can pin are bounded.
    """

    def __init__(self, per_caller: int = 2, total: int = 64) -> None:
        self._per_caller = per_caller
        self._total = threading.BoundedSemaphore(total)
        self._callers: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def _places(self, caller: str) -> threading.BoundedSemaphore:
        with self._lock:
            return self._callers.setdefault(caller, threading.BoundedSemaphore(self._per_caller))

    def resolve(self, host: str, port: int, caller: str, seconds: float) -> list[tuple[Any, ...]]:
        """getaddrinfo's answer; WebhookUnresolved when the name does not resolve within `seconds`."""
        deadline = time.monotonic() + seconds
        places = self._places(caller)
        if not places.acquire(timeout=seconds):
            raise WebhookUnresolved(f"webhookUrl: the host {host!r} cannot be resolved (lookups of this key are slow)")
        if not self._total.acquire(timeout=max(0.0, deadline - time.monotonic())):
            places.release()
            raise WebhookUnresolved(f"webhookUrl: the host {host!r} cannot be resolved now; retry shortly")
        answer: list[list[tuple[Any, ...]]] = []
        done = threading.Event()

        def look_up() -> None:
            try:
                answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except (OSError, UnicodeError):
                pass
            finally:
                self._total.release()
                places.release()
                done.set()

        threading.Thread(target=look_up, name="webhook-dns", daemon=True).start()
        if not done.wait(max(0.0, deadline - time.monotonic())) or not answer or not answer[0]:
            raise WebhookUnresolved(f"webhookUrl: the host {host!r} cannot be resolved")
        return answer[0]


_resolver = _Resolver()


def master_key(webhook_secret: str) -> bytes:
    """WEBHOOK_SECRET's key: `whsec_<base64>` as Standard Webhooks writes secrets, or any other
    string as its UTF-8 bytes (what older settings hold). ValueError when the base64 is broken."""
    if webhook_secret.startswith(_SECRET_PREFIX):
        try:
            key = base64.b64decode(webhook_secret[len(_SECRET_PREFIX) :], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"WEBHOOK_SECRET: whsec_ must be followed by base64: {exc}") from None
    else:
        key = webhook_secret.encode()
    if not key:
        raise ValueError("WEBHOOK_SECRET is empty")
    return key


def caller_secret(webhook_secret: str, caller: str) -> str:
    """The secret that signs `caller`'s webhooks, as `whsec_<base64>`: HMAC-SHA256 of the caller
    id under WEBHOOK_SECRET. One caller's secret tells nothing of another's or of the master."""
    key = hmac.new(master_key(webhook_secret), f"jewel-webhooks/v1:{caller}".encode(), hashlib.sha256).digest()
    return _SECRET_PREFIX + base64.b64encode(key).decode()


def signed_headers(secret: str, message_id: str, body: bytes, now: float) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: signed again with each attempt's time, so a
    late retry still passes a receiver's 5-minute window."""
    when = datetime.fromtimestamp(int(now), tz=UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": StandardWebhook(secret).sign(message_id, when, body.decode()),
    }


# IPv6 forms that carry an IPv4 address, which a translator or tunnel on the way may turn into
# 127.0.0.1 or 10.x: refused whole (the standard library calls some of them global).
_EMBEDDING_IPV4 = tuple(
    ipaddress.ip_network(n)
    for n in (
        "64:ff9b::/96",  # NAT64, well-known prefix (RFC 6052)
        "64:ff9b:1::/48",  # NAT64, local use (RFC 8215)
        "2002::/16",  # 6to4 (RFC 3056)
        "::/96",  # IPv4-compatible (deprecated, RFC 4291), with :: and ::1
        "::ffff:0:0/96",  # IPv4-mapped
    )
)
_MAX_ADDRESSES = 3  # tried in the resolver's order when a connection fails


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if any(ip in network for network in _EMBEDDING_IPV4):
        return False
    return ip.is_global and not ip.is_multicast


def check_webhook_url(url: str, allow_private: bool, caller: str = ANONYMOUS) -> list[str]:
    """Refuse what a webhook must not reach: other schemes, and (unless allowed) any host that
    resolves to a loopback, private, link-local or otherwise non-public address, so a caller
    cannot make the gateway probe the network it sits in.

    Returns the addresses the host resolved to, in the resolver's order: the POST connects to
    these (`PinnedTransport`), never to what a second lookup might answer."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"webhookUrl is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("webhookUrl must be an http:// or https:// URL with a host")
    host = parts.hostname
    infos = _resolver.resolve(host, port or (443 if parts.scheme == "https" else 80), caller, _RESOLVE_SECONDS)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        if not allow_private and not _public(address):
            raise WebhookRefused(
                f"webhookUrl: {host} is {address}, a loopback or private address; webhooks go to public hosts only"
            )
    return addresses


class PinnedTransport(httpx.BaseTransport):
    """Connects to the addresses that were checked, whatever the URL's name resolves to now.

    Looking the name up again to connect would let a name server answer a public address for
    the check and 127.0.0.1 for the connection (DNS rebinding). Only the connection's address
    changes: the request keeps the name in its Host header and, for https, as the TLS server
    name (SNI), which is also what the certificate is checked against. One transport serves one
    URL (a client per attempt), so no pooled connection is shared between names.
    """

    def __init__(self, addresses: list[str], verify: ssl.SSLContext | bool = True) -> None:
        if not addresses:
            raise ValueError("no address to connect to")
        self._addresses = addresses[:_MAX_ADDRESSES]
        self._inner = httpx.HTTPTransport(verify=verify, trust_env=False)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        request.extensions = {**request.extensions, "sni_hostname": url.host}
        failure: httpx.TransportError | None = None
        for address in self._addresses:
            request.url = url.copy_with(host=address.split("%", 1)[0])
            try:
                return self._inner.handle_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = exc
            finally:
                request.url = url
        assert failure is not None
        raise failure

    def close(self) -> None:
        self._inner.close()


def redact(url: str) -> str:
    """What logs, run tags and delivery records show of a webhook URL: scheme://host[:port] only.

    Credentials, query and fragment carry tokens, and so does the path of Slack- and Discord-style
    URLs (`/services/T000/B000/<secret>`): all of them stay in the store (storage_layout.webhook_url_path)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # host[:port], a bracketed IPv6 address included
    return f"{parts.scheme}://{host}"


def store_webhook_url(store: BlobStore, url: str) -> dict[str, str]:
    """Keep the full URL in the blob store and return the run tags that lead the dispatcher to it.

    Called when the run is launched (after the URL was checked); the key is random, so the blob
    is named by nothing a caller sees."""
    key = uuid.uuid4().hex
    store.put(webhook_url_path(key), json.dumps({"url": url}).encode(), "application/json")
    return {WEBHOOK_TAG: "1", WEBHOOK_URL_TAG: redact(url), WEBHOOK_KEY_TAG: key}
