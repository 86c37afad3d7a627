"""Oversized and malformed bodies: refused before they are read whole."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway_client import gateway_client, gateway_with_fake_dagster, start_body, stored_blobs


def test_body_over_the_limit_is_413_from_its_content_length(tmp_path: Path) -> None:
    """Refused from the declared length alone: not a byte of the body is read. (A body sent whole
    would be refused by the streaming count too, so the body here is small and says when it is
    read: with the header ignored it would be read, and answered as a small request.)"""
    reads: list[bytes] = []

    def body() -> Iterator[bytes]:
        reads.append(b"{}")
        yield b"{}"

    declared = {"content-type": "application/json", "content-length": str(1024 * 1024 + 1)}
    with gateway_client(tmp_path, max_body_bytes=1024 * 1024) as client:
        response = client.post("/workflow/start", content=body(), headers=declared)
    assert response.status_code == 413, response.text
    assert "larger than 1 MB" in response.json()["detail"]
    assert reads == [], "the body was read before the refusal"


def test_streamed_body_over_the_limit_is_413(tmp_path: Path) -> None:
    def chunks():  # no Content-Length: the limit is counted while streaming
        for _ in range(40):
            yield b"x" * 65536

    with gateway_client(tmp_path, max_body_bytes=1024 * 1024) as client:
        response = client.post("/workflow/start", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "larger than 1 MB" in response.json()["detail"], response.text


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


@pytest.mark.parametrize(
    ("url", "settings", "words"),
    [
        ("https://hooks.example.com/done", {}, "webhooks are off"),  # no WEBHOOK_SECRET on this gateway
        ("ftp://hooks.example.com/done", {"webhook_secret": "s3cret"}, "http:// or https://"),
        ("http://127.0.0.1:9/done", {"webhook_secret": "s3cret"}, "loopback or private"),
    ],
    ids=["webhooks-off", "scheme", "loopback"],
)
def test_a_refused_webhook_stores_and_launches_nothing(
    tmp_path: Path, url: str, settings: dict[str, Any], words: str
) -> None:
    with gateway_with_fake_dagster(tmp_path, **settings) as (client, dagster):
        response = client.post("/workflow/start", json=start_body(webhookUrl=url))
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("webhookUrl") and words in response.json()["detail"]
    assert stored_blobs(tmp_path) == []
    assert dagster.partitions_added == [] and dagster.launches == []
