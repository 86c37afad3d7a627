"""`python -m gateway` listens where the settings say: the seed's API_PORT, and BIND_HOST."""

from __future__ import annotations

from typing import Any

import pytest

import gateway.__main__ as entry_point


def test_the_entry_point_listens_on_api_port(monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Any] = {}
    monkeypatch.setattr(entry_point.uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    monkeypatch.setenv("API_PORT", "18123")
    monkeypatch.setenv("BIND_HOST", "0.0.0.0")
    entry_point.main(["--log-level", "warning"])
    assert served == {
        "app": "gateway.main:app",
        "host": "0.0.0.0",
        "port": 18123,
        "log_level": "warning",
        "proxy_headers": False,  # X-Forwarded-For is trusted from FORWARDED_ALLOW_IPS only
    }


def test_an_api_port_that_is_no_port_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entry_point.uvicorn, "run", lambda app, **options: pytest.fail("served anyway"))
    monkeypatch.setenv("API_PORT", "70000")
    with pytest.raises(ValueError, match="api_port"):
        entry_point.main([])
