"""API keys, rate limits, CORS and /health's openness, in-process (no Dagster needed)."""

from __future__ import annotations

import hashlib
import logging
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.security import caller_id, client_network
from tests.support.answers import NEEDS_KEY, PIPELINE_DOWN, assert_refused, no_workflow
from tests.support.e2e_stack import free_port, wait_until
from tests.support.gateway_client import from_another_address, gateway_client
from tests.support.infra import missing, redis_url

WORKFLOW = "/workflow/jewelry-gen-00000000-0000-0000-0000-000000000000"
# Redis is shared by every test run on this machine: each run uses keys and addresses of its own.
RUN = uuid.uuid4().hex[:8]


def test_keys_are_required_when_configured(tmp_path: Path) -> None:
    with gateway_client(tmp_path, gateway_api_keys="alpha-key,beta-key") as client:
        missing = client.get(WORKFLOW)
        assert missing.status_code == 401 and "API key" in missing.json()["detail"]
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert_refused(client.get(WORKFLOW, headers={"X-API-Key": "wrong"}), 401, NEEDS_KEY)
        # Past authentication, the next problem is Dagster being down (503), not the key.
        assert_refused(client.get(WORKFLOW, headers={"X-API-Key": "alpha-key"}), 503, PIPELINE_DOWN)
        assert_refused(client.get(WORKFLOW, headers={"Authorization": "Bearer beta-key"}), 503, PIPELINE_DOWN)


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
        assert_refused(client.get("/workflow/not-ours", headers={"X-API-Key": "b"}), 404, no_workflow("not-ours"))


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


def test_without_keys_the_gateway_starts_only_when_anonymous_access_is_asked_for(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="ALLOW_ANONYMOUS"):
        with gateway_client(tmp_path, allow_anonymous=False):
            pass
    with pytest.raises(RuntimeError, match="GATEWAY_SECRET"):
        with gateway_client(tmp_path, gateway_api_keys="alpha-key", gateway_secret=""):
            pass
    with gateway_client(tmp_path, allow_anonymous=True) as client:
        assert client.get("/health").status_code == 200


def test_wrong_keys_are_rate_limited_per_address(tmp_path: Path) -> None:
    with gateway_client(tmp_path, gateway_api_keys="alpha-key", auth_failures_per_minute=3) as client:
        codes = [client.get(WORKFLOW, headers={"X-API-Key": f"guess-{i}"}).status_code for i in range(4)]
        assert codes == [401, 401, 401, 429], codes
        other = from_another_address(client, "10.0.0.9")  # the same gateway, its counters included
        assert_refused(other.get(WORKFLOW, headers={"X-API-Key": "guess"}), 401, NEEDS_KEY)  # its own count
        assert client.get(WORKFLOW, headers={"X-API-Key": "guess-5"}).status_code == 429  # the first's still full


def test_wrong_metrics_tokens_count_against_the_wrong_key_limit(tmp_path: Path) -> None:
    """README, Metrics: wrong /metrics tokens count against the address's wrong-key limit, one
    count with wrong API keys: past it that address's wrong guesses of either kind get 429. A right
    key or token is never refused for them (issue 29, finding 3)."""
    settings = {"gateway_api_keys": "alpha-key", "metrics_api_key": "scrape-token", "auth_failures_per_minute": 3}
    scrape = {"Authorization": "Bearer scrape-token"}
    with gateway_client(tmp_path, "10.0.0.21", **settings) as client:
        codes = [client.get("/metrics", headers={"Authorization": f"Bearer guess-{i}"}).status_code for i in range(3)]
        assert codes == [401, 401, 401], codes
        blocked = client.get(WORKFLOW, headers={"X-API-Key": "guess-key"})  # a wrong key after wrong tokens
        assert blocked.status_code == 429 and "wrong API key" in blocked.json()["detail"], blocked.text
        assert int(blocked.headers["Retry-After"]) >= 1
        assert client.get("/metrics", headers=scrape).status_code == 200  # the right token still scrapes
        other = from_another_address(client, "10.0.0.23")  # the same gateway: another address, its own count
        assert other.get("/metrics", headers={"Authorization": "Bearer guess"}).status_code == 401
    with gateway_client(tmp_path, "10.0.0.22", **settings) as client:  # mixed: 2 wrong keys + 1 wrong token
        assert [client.get(WORKFLOW, headers={"X-API-Key": f"guess-{i}"}).status_code for i in range(2)] == [401, 401]
        assert client.get("/metrics", headers={"Authorization": "Bearer guess"}).status_code == 401
        refused = client.get("/metrics", headers={"Authorization": "Bearer guess-again"})
        assert refused.status_code == 429 and "wrong" in refused.json()["detail"], refused.text


def test_an_ipv6_client_is_limited_by_its_64_prefix() -> None:
    assert client_network("2001:db8:1:2:aaaa::1") == client_network("2001:db8:1:2:ffff::7") == "2001:db8:1:2::/64"
    assert client_network("2001:db8:1:3::1") != client_network("2001:db8:1:2::1")
    assert client_network("::ffff:192.0.2.7") == "192.0.2.7" and client_network("192.0.2.7") == "192.0.2.7"


def test_one_ipv6_host_rotating_addresses_shares_one_limit(tmp_path: Path) -> None:
    prefix = f"2001:db8:{int(RUN[:4], 16):x}:{int(RUN[4:], 16):x}"
    codes = []
    for suffix in ("1", "2", "3"):  # three addresses of one /64: one bucket
        with gateway_client(tmp_path, f"{prefix}::{suffix}", redis_url=redis_url(), rate_limit_per_minute=2) as client:
            codes.append(client.get(WORKFLOW).status_code)
    assert codes == [503, 503, 429], codes


def test_replicas_share_rate_limits_through_redis(tmp_path: Path) -> None:
    """Two gateways (two apps, as two replicas would be) count one caller's calls together."""
    key = f"key-{RUN}"
    settings = {"gateway_api_keys": key, "rate_limit_per_minute": 3, "redis_url": redis_url()}
    with gateway_client(tmp_path, **settings) as first, gateway_client(tmp_path, **settings) as second:
        codes = [c.get(WORKFLOW, headers={"X-API-Key": key}).status_code for c in (first, second, first, second)]
    assert codes == [503, 503, 503, 429], codes


@contextmanager
def private_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of this test's own on a free loopback port (no persistence), and its URL:
    the test may stop it without touching the machine's Redis that other tests share."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listens() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    try:
        wait_until(listens, "the private redis-server", timeout=30, every=0.05)
        yield process, f"redis://127.0.0.1:{port}/0"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        process.wait()


def test_a_failing_redis_lets_requests_through(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """README, Rate limits: "A Redis that fails lets requests through and logs a warning": Redis
    counting, then hanging (SIGSTOP: each call waits out the 0.5 s socket timeout), then gone."""
    key = "alpha-key"
    with ThreadPoolExecutor(1) as caller, private_redis(tmp_path) as (redis, url):
        with gateway_client(tmp_path, gateway_api_keys=key, rate_limit_per_minute=2, redis_url=url) as client:

            def calls(*api_keys: str) -> list[int]:
                """Status codes, or a failure when the calls hang (a Redis call without a timeout)."""

                def send() -> list[int]:
                    return [client.get(WORKFLOW, headers={"X-API-Key": k}).status_code for k in api_keys]

                return caller.submit(send).result(timeout=30)

            # Redis up: the third call in a minute is over the limit (503: past the limit, Dagster is down).
            assert calls(key, key, key) == [503, 503, 429]
            with caplog.at_level(logging.WARNING, logger="gateway.security"):
                redis.send_signal(signal.SIGSTOP)  # hangs: connections open, nothing answers
                try:
                    assert calls(key, key, "wrong-key") == [503, 503, 401]
                finally:
                    redis.send_signal(signal.SIGCONT)  # a call still waiting ends, so the gateway can stop
                redis.kill()  # gone: connections refused
                redis.wait()
                assert calls(key, key, "wrong-key") == [503, 503, 401]
            warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.security"]
            assert len(warnings) >= 6 and all("request let through" in w for w in warnings), warnings
    # A gateway that starts while its Redis is down serves as well.
    closed = f"redis://127.0.0.1:{free_port()}/0"
    with gateway_client(tmp_path, gateway_api_keys=key, rate_limit_per_minute=1, redis_url=closed) as client:
        assert [client.get(WORKFLOW, headers={"X-API-Key": key}).status_code for _ in range(3)] == [503] * 3


def test_callers_are_named_by_a_keyed_hash() -> None:
    assert caller_id("alpha-key", "secret-one") != caller_id("alpha-key", "secret-two")
    assert caller_id("alpha-key", "secret-one") != hashlib.sha256(b"alpha-key").hexdigest()[:24]


def test_the_openapi_document_shows_both_ways_to_send_a_key(tmp_path: Path) -> None:
    with gateway_client(tmp_path, gateway_api_keys="alpha-key") as client:
        schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["APIKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key", **_description(schemes)}
    assert schemes["HTTPBearer"]["scheme"] == "bearer"


def _description(schemes: dict[str, dict[str, str]]) -> dict[str, str]:
    return {"description": schemes["APIKeyHeader"]["description"]}


def test_health_asks_dagster_at_most_once_in_two_seconds(tmp_path: Path) -> None:
    with gateway_client(tmp_path) as client:
        runs = client.app.state.runs  # type: ignore[attr-defined]
        asked = []
        real_query = runs.transport.query
        runs.transport.query = lambda *args, **kwargs: asked.append(args[0]) or real_query(*args, **kwargs)
        answers = {client.get("/health").json()["dagster"] for _ in range(20)}
    assert answers == {"disconnected"} and len(asked) == 1, asked


def test_counters_of_addresses_gone_quiet_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14, finding 7: the old buckets kept every address ever seen (200k = 41 MB)."""
    import types

    import limits.storage.memory
    from limits import RateLimitItemPerSecond

    from gateway.security import RateLimits
    from gateway.settings import GatewaySettings

    # The memory storage's clock, moved by the test: the counters expire when the clock says so,
    # not after 4 s of real waiting (the test took ~4.2 s), and none before the count below.
    now = [time.time()]
    monkeypatch.setattr(limits.storage.memory, "time", types.SimpleNamespace(time=lambda: now[0]))
    limits_ = RateLimits(GatewaySettings(allow_anonymous=True))
    storage = limits_._limiter.storage  # the memory storage: its counters are what grows
    per_second = RateLimitItemPerSecond(5, multiples=2)  # the sliding window keeps a counter 4 s
    for i in range(500):
        assert limits_.take(per_second, f"address:198.51.{i // 256}.{i % 256}") == 0.0
    assert len(storage.storage) >= 500  # type: ignore[attr-defined]
    now[0] += 4.5
    # Expired counters go with the storage's next expiry pass, which any later call starts.
    deadline = time.monotonic() + 10
    while len(storage.storage) > 2 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        limits_.take(per_second, "address:192.0.2.1")
        time.sleep(0.02)
    assert len(storage.storage) <= 2  # type: ignore[attr-defined]  # the one still-active address


def test_a_valid_key_is_never_refused_for_someone_elses_wrong_keys(tmp_path: Path) -> None:
    """Issue 29, finding 3: behind a load balancer every caller shares one address; 20 wrong keys
    a minute from it locked every valid key out."""
    with gateway_client(tmp_path, gateway_api_keys="alpha-key", auth_failures_per_minute=3) as client:
        wrong = [client.get(WORKFLOW, headers={"X-API-Key": f"guess-{i}"}).status_code for i in range(6)]
        valid = client.get(WORKFLOW, headers={"X-API-Key": "alpha-key"})
        bearer = client.get(WORKFLOW, headers={"Authorization": "Bearer alpha-key"})
    assert wrong == [401, 401, 401, 429, 429, 429], wrong
    assert valid.status_code == 503 and bearer.status_code == 503  # past the key: Dagster is down here


def test_the_metrics_token_is_never_refused_for_wrong_ones(tmp_path: Path) -> None:
    settings = {"gateway_api_keys": "alpha-key", "metrics_api_key": "scrape-token", "auth_failures_per_minute": 2}
    with gateway_client(tmp_path, **settings) as client:
        wrong = [client.get("/metrics", headers={"Authorization": f"Bearer no-{i}"}).status_code for i in range(4)]
        right = client.get("/metrics", headers={"Authorization": "Bearer scrape-token"})
    assert wrong == [401, 401, 429, 429] and right.status_code == 200, wrong


def test_x_forwarded_for_counts_only_from_configured_proxies(tmp_path: Path) -> None:
    def wrong_keys(client: object, forwarded: str, count: int) -> list[int]:
        headers = {"X-API-Key": "guess", "X-Forwarded-For": forwarded}
        return [client.get(WORKFLOW, headers=headers).status_code for _ in range(count)]  # type: ignore[attr-defined]

    settings = {"gateway_api_keys": "alpha-key", "auth_failures_per_minute": 2}
    with gateway_client(tmp_path, "10.0.0.5", forwarded_allow_ips="10.0.0.5", **settings) as behind_proxy:
        # Each client behind the proxy has its own count.
        assert wrong_keys(behind_proxy, "203.0.113.7", 3) == [401, 401, 429]
        assert wrong_keys(behind_proxy, "203.0.113.8", 1) == [401]
    with gateway_client(tmp_path, "10.0.0.6", forwarded_allow_ips="10.0.0.5", **settings) as direct:
        # Not a trusted proxy: its X-Forwarded-For is ignored, rotating it gains nothing.
        assert wrong_keys(direct, "203.0.113.1", 1) + wrong_keys(direct, "203.0.113.2", 2) == [401, 401, 429]
