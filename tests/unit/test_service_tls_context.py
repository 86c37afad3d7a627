"""The model services' HTTP clients share one TLS context per process (resources/http_services.py):
httpx built one per client (the CA bundle read and parsed, ~21 ms), and a run worker made two of
them ahead of its first SAM3 call (issue 28)."""

from __future__ import annotations

import ssl
from typing import Any

import certifi
import httpx
import pytest

from jewel_dagster.resources import http_services
from jewel_dagster.resources.http_services import HttpImageManipulator, HttpSegmenter


def test_the_clients_of_a_process_read_the_ca_bundle_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Any] = []
    stock = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        reads.append(args or kwargs)
        stock(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    http_services.tls_context.cache_clear()
    try:
        clients = [
            HttpImageManipulator(base_url="http://127.0.0.1:9/image-manipulator")._client(),
            HttpSegmenter(base_url="http://127.0.0.1:9/sam3")._client(),
        ]
        assert len(reads) == 1
        for client in clients:
            client.close()
    finally:
        http_services.tls_context.cache_clear()


def test_the_shared_context_verifies_as_httpxs_own_would(monkeypatch: pytest.MonkeyPatch) -> None:
    context = http_services.tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    # The same CAs as httpx's own context: looked up lazily in the suite (tests/support/lazy_cas.py)...
    assert context.cert_store_stats() == httpx.create_ssl_context().cert_store_stats()
    # ...and read up front from a bundle, as a deployment's SSL_CERT_FILE or certifi's has them.
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    http_services.tls_context.cache_clear()
    try:
        assert http_services.tls_context().cert_store_stats()["x509_ca"] > 0
    finally:
        http_services.tls_context.cache_clear()
