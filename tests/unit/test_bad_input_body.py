"""Oversized and malformed bodies: refused before they are read whole."""

from __future__ import annotations

from pathlib import Path

from tests.support.gateway_client import gateway_client, start_body


def test_body_over_the_limit_is_413_from_its_content_length(tmp_path: Path) -> None:
    with gateway_client(tmp_path, max_body_bytes=1024 * 1024) as client:
        response = client.post(
            "/workflow/start", content=b"x" * (1024 * 1024 + 1), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert "larger than 1 MB" in response.json()["detail"]


def test_streamed_body_over_the_limit_is_413(tmp_path: Path) -> None:
    def chunks():  # no Content-Length: the limit is counted while streaming
        for _ in range(40):
            yield b"x" * 65536

    with gateway_client(tmp_path, max_body_bytes=1024 * 1024) as client:
        response = client.post("/workflow/start", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_not_json_is_422_naming_the_body(tmp_path: Path) -> None:
    with gateway_client(tmp_path) as client:
        response = client.post("/workflow/start", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "JSON" in response.json()["detail"]


def test_missing_fields_are_named(tmp_path: Path) -> None:
    with gateway_client(tmp_path) as client:
        response = client.post("/workflow/start", json={"maskPoints": start_body()["maskPoints"]})
    assert response.status_code == 422
    assert "originalImageBase64" in response.json()["detail"]
    assert response.json()["errors"][0]["field"] == "originalImageBase64"
