"""Issue 29, finding 10 (the gateway's part): the page's headers and key storage, and API_DOCS."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.routes.page import STATIC
from tests.support.gateway_client import gateway_client


def test_the_page_is_served_with_a_strict_policy_and_the_usual_headers(tmp_path: Path) -> None:
    with gateway_client(tmp_path) as client:
        page, script = client.get("/"), client.get("/static/app.js")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    for response in (page, script):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"


def test_the_page_needs_no_inline_script_and_keeps_the_key_for_the_session_only() -> None:
    html = (STATIC / "index.html").read_text()
    script = (STATIC / "app.js").read_text()
    assert "onsubmit=" not in html and "onclick=" not in html and "<script>" not in html
    assert "sessionStorage.setItem" in script and "localStorage.setItem" not in script


@pytest.mark.parametrize(("docs", "code"), [("on", 200), ("off", 404)])
def test_api_docs_follow_the_setting(tmp_path: Path, docs: str, code: int) -> None:
    with gateway_client(tmp_path, api_docs=docs) as client:
        assert client.get("/openapi.json").status_code == code
        assert client.get("/docs").status_code == code
        assert client.get("/redoc").status_code == code
        assert client.get("/health").status_code == 200
