"""Names and texts fit for a caller: internal addresses hidden.

Shared by the gateway (error texts, `result.backends`) and the pipeline (the generator named in
a generated image's C2PA manifest, which anyone holding the image can read).
"""

from __future__ import annotations

import re

_ADDRESS = re.compile(
    r"\b[a-z][a-z0-9+.-]*://[^\s)'\"]+"  # a URL: http://10.0.0.7:9000/sam3
    r"|\[[0-9a-f:.%]+\](?::\d{1,5})?"  # a bracketed IPv6 address: [fd00::7]:6379
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b"  # an IPv4 address: 10.0.0.7, 10.0.0.7:5432
    r"|\b[a-z][a-z0-9-]*(?:\.[a-z0-9-]+)*:\d{1,5}\b",  # host:port: code-server:4000, redis.internal:6379
    re.IGNORECASE,
)
# A Celery worker's name (`celery@<host>`) names the machine it runs on.
_WORKER = re.compile(r"\b[\w.-]+@[a-z0-9][\w.-]*", re.IGNORECASE)


def hide_addresses(message: str) -> str:
    """Addresses in a message are internal: a service's URL, host:port, an IP address, a Celery
    worker's name. The caller sees `[internal address]` / `[worker]`; the log keeps the original."""
    return _ADDRESS.sub("[internal address]", _WORKER.sub("[worker]", message))


def public_backend(name: str) -> str:
    """A backend's name fit for the caller: `http:<url>` (a model service) reads `http`, since
    the address is internal; local stand-ins and Gemini's model name read as they are."""
    if name.startswith("http:"):
        return "http"
    return hide_addresses(name)
