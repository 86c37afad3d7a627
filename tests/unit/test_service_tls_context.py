"""The model services' HTTP clients share one TLS context per process (resources/http_services.py):
httpx built one per client (the CA bundle read and parsed, ~21 ms), and a run worker made two of
them ahead of its first SAM3 call (issue 28)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
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


def _loaded_cas(
    build: Callable[[], ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], dict[str, int]]:
    """The CA locations a context was given (`load_verify_locations` calls) and its store's counts."""
    calls: list[Any] = []
    stock = ssl.SSLContext.load_verify_locations

    def recorded(self: ssl.SSLContext, cafile: Any = None, capath: Any = None, cadata: Any = None) -> None:
        calls.append((cafile, capath, cadata))
        stock(self, cafile, capath, cadata)

    with monkeypatch.context() as patch:
        patch.setattr(ssl.SSLContext, "load_verify_locations", recorded)
        context = build()
    return calls, context.cert_store_stats()


@pytest.mark.parametrize(
    "environment",
    [
        {},  # certifi's bundle
        {"SSL_CERT_FILE": certifi.where()},  # a deployment's bundle, read up front
        {"SSL_CERT_DIR": "/etc/ssl/certs"},  # a hashed folder, looked up lazily (as in the suite)
    ],
    ids=["certifi", "SSL_CERT_FILE", "SSL_CERT_DIR"],
)
def test_the_shared_context_verifies_as_httpxs_own_would(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the same CAs as httpx's own context, whichever way the environment names them. The
    suite itself runs with SSL_CERT_DIR (tests/support/lazy_cas.py), where a context loads no CA
    up front: comparing the stores' counts alone would then pass for a context trusting nothing,
    so the locations each context was given are compared too."""
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    http_services.tls_context.cache_clear()
    try:
        ours, our_store = _loaded_cas(http_services.tls_context, monkeypatch)
        context = http_services.tls_context()
    finally:
        http_services.tls_context.cache_clear()
    theirs, their_store = _loaded_cas(httpx.create_ssl_context, monkeypatch)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert ours and ours == theirs, (ours, theirs)
    assert our_store == their_store
    if "SSL_CERT_DIR" not in environment:
        assert our_store["x509_ca"] > 0  # a bundle is read up front
