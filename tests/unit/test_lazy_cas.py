"""The suite's processes build TLS contexts that read CAs lazily (tests/support/lazy_cas.py):
httpx's default context loads no certificate up front, and still checks every certificate."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import httpx

from tests.support.lazy_cas import SYSTEM_CA_FOLDER, read_cas_lazily


def test_the_suite_s_clients_load_no_certificate_up_front_and_still_check_certificates() -> None:
    assert os.environ.get("SSL_CERT_DIR") == str(SYSTEM_CA_FOLDER) and "SSL_CERT_FILE" not in os.environ
    context = httpx.create_ssl_context()
    assert context.cert_store_stats()["x509_ca"] == 0  # a bundle would be ~140, parsed per client
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_without_a_hashed_folder_the_environment_stays_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not hashed")
    environ = {"SSL_CERT_FILE": "/some/bundle.pem"}
    assert not read_cas_lazily(environ, tmp_path)
    assert environ == {"SSL_CERT_FILE": "/some/bundle.pem"}
