"""API keys, rate limits, CORS and /health's openness, in-process (no Dagster needed)."""

from __future__ import annotations

from pathlib import Path

from tests.support.gateway_client import gateway_client

WORKFLOW = "/workflow/jewelry-gen-00000000-0000-0000-0000-000000000000"


def test_keys_are_required_when_configured(tmp_path: Path) -> None:
    with gateway_client(tmp_path, gateway_api_keys="alpha-key,beta-key") as client:
        missing = client.get(WORKFLOW)
        assert missing.status_code == 401 and "API key" in missing.json()["detail"]
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert client.get(WORKFLOW, headers={"X-API-Key": "wrong"}).status_code == 401
        # Past authentication, the next problem is Dagster being down (503), not the key.
        assert client.get(WORKFLOW, headers={"X-API-Key": "alpha-key"}).status_code == 503
        assert client.get(WORKFLOW, headers={"Authorization": "Bearer beta-key"}).status_code == 503


def test_health_is_open_and_reveals_no_secrets(tmp_path: Path) -> None:
    with gateway_client(
        tmp_path, gateway_api_keys="alpha-key", sam3_url="http://127.0.0.1:9/sam3", gemini_api_key="g-secret"
    ) as client:
        response = client.get("/health")
    assert response.status_code == 200
    text = response.text
    assert "alpha-key" not in text and "g-secret" not in text and "127.0.0.1" not in text


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    with gateway_client(tmp_path, rate_limit_per_minute=5, gateway_api_keys="a,b") as client:
        codes = [client.get("/workflow/not-ours", headers={"X-API-Key": "a"}).status_code for _ in range(6)]
        assert codes[:5] == [404] * 5 and codes[5] == 429
        limited = client.get("/workflow/not-ours", headers={"X-API-Key": "a"})
        assert int(limited.headers["Retry-After"]) >= 1 and "rate limit" in limited.json()["detail"]
        # Per key: another caller is not slowed down by the first.
        assert client.get("/workflow/not-ours", headers={"X-API-Key": "b"}).status_code == 404


def test_cors_allows_only_configured_origins(tmp_path: Path) -> None:
    with gateway_client(tmp_path, cors_origins="http://shop.test") as client:
        allowed = client.options(
            "/workflow/start",
            headers={"Origin": "http://shop.test", "Access-Control-Request-Method": "POST"},
        )
        refused = client.options(
            "/workflow/start",
            headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "POST"},
        )
    assert allowed.headers.get("access-control-allow-origin") == "http://shop.test"
    assert "access-control-allow-origin" not in refused.headers
