"""/metrics, the correlation id and the JSON log lines, in-process (TestClient and a test instance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from gateway.observability.logs import request_id_from
from tests.support.answers import assert_refused, no_workflow
from tests.support.gateway_client import gateway_client
from tests.support.metrics import samples, value

WORKFLOW = "/workflow/jewelry-gen-00000000-0000-0000-0000-000000000000"


@pytest.fixture(autouse=True)
def _no_dagster_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """The figures read from Dagster need a DAGSTER_HOME; these tests give them none (or their own)."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


def test_http_calls_are_counted_by_route_template_and_status(tmp_path: Path) -> None:
    with gateway_client(tmp_path) as client:
        before = samples(client.get("/metrics").text)
        for _ in range(3):
            assert client.get(WORKFLOW).status_code == 503  # Dagster is down: the status is what counts
        assert_refused(client.get("/workflow/not-an-id"), 404, no_workflow("not-an-id"))
        assert client.get("/no/such/route").json() == {"detail": "Not Found"}  # FastAPI's: no route
        after = samples(client.get("/metrics").text)
    route = "/workflow/{workflow_id}"
    moved = value(after, "jewel_http_requests_total", method="GET", route=route, status="503") - value(
        before, "jewel_http_requests_total", method="GET", route=route, status="503"
    )
    assert moved == 3
    assert value(after, "jewel_http_requests_total", method="GET", route=route, status="404") == 1
    assert value(after, "jewel_http_requests_total", method="GET", route="unmatched", status="404") == 1
    count = "jewel_http_request_duration_seconds_count"
    assert value(after, count, method="GET", route=route) == 4
    assert value(after, "jewel_http_request_duration_seconds_bucket", method="GET", route=route, le="+Inf") == 4
    # No raw path becomes a label: ids would multiply the series without bound.
    assert not any("jewelry-gen-0000" in str(key) for key in after)
    assert value(after, "jewel_dagster_storage_up") == 0  # no DAGSTER_HOME here: said, not hidden


def test_metrics_need_their_own_token_when_api_keys_are_on(tmp_path: Path) -> None:
    with gateway_client(tmp_path, gateway_api_keys="alpha-key") as client:
        refused = client.get("/metrics", headers={"Authorization": "Bearer alpha-key"})
        assert refused.status_code == 403 and "METRICS_API_KEY" in refused.json()["detail"]
    with gateway_client(tmp_path, gateway_api_keys="alpha-key", metrics_api_key="scrape-token") as client:
        needs_token = "/metrics needs Authorization: Bearer <METRICS_API_KEY>"
        assert_refused(client.get("/metrics"), 401, needs_token)
        assert_refused(client.get("/metrics", headers={"Authorization": "Bearer alpha-key"}), 401, needs_token)
        scraped = client.get("/metrics", headers={"Authorization": "Bearer scrape-token"})
        assert scraped.status_code == 200 and "jewel_http_requests_total" in scraped.text
        schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
        assert schemes["MetricsBearer"]["scheme"] == "bearer"
    with gateway_client(tmp_path) as client:  # no keys (loopback, ALLOW_ANONYMOUS): open
        assert client.get("/metrics").status_code == 200


def test_the_request_id_is_echoed_or_made_and_logged_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with gateway_client(tmp_path, log_format="json") as client:
        given = client.get(WORKFLOW, headers={"X-Request-ID": "shop-42.retry:1"})
        made = client.get(WORKFLOW, headers={"X-Request-ID": "bad id\nwith a newline"})
    assert given.headers["X-Request-ID"] == "shop-42.retry:1"
    assert made.headers["X-Request-ID"] != "bad id\nwith a newline" and len(made.headers["X-Request-ID"]) == 32
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("requestId") == "shop-42.retry:1"]
    # The error line (Dagster down) and the access line, both with the call's ids.
    assert {line["logger"] for line in mine} >= {"gateway.workflows", "gateway.http"}, lines
    access = next(line for line in mine if line["logger"] == "gateway.http")
    assert access["workflowId"] == WORKFLOW.rsplit("/", 1)[1]
    assert access["route"] == "/workflow/{workflow_id}" and access["status"] == 503


@pytest.mark.parametrize(
    ("header", "kept"),
    [("abc", True), ("A" * 128, True), ("A" * 129, False), ("-leading", False), ("a b", False), (None, False)],
)
def test_request_ids_are_plain_tokens(header: str | None, kept: bool) -> None:
    assert (request_id_from(header) == header) is kept


def test_webhook_deliveries_are_counted_by_outcome(tmp_path: Path) -> None:
    """Each delivery the outbox ends is counted once: delivered, refused (a final 4xx), gave_up."""
    from gateway.observability.registry import GatewayMetrics
    from tests.support.outbox import Clock, drain, inline_dispatcher, outbox_settings, queue
    from tests.support.receivers import webhook_receiver

    metrics = GatewayMetrics()
    settings = outbox_settings(tmp_path, webhook_give_up_seconds=60.0)
    clock = Clock()
    dispatcher = inline_dispatcher(settings, clock, on_outcome=metrics.webhook_ended)
    with webhook_receiver() as accepting, webhook_receiver(answers=[400]) as refusing:
        with webhook_receiver(answers=[503] * 100) as down:
            for index, url in enumerate((accepting.url, accepting.url, refusing.url, down.url)):
                queue(settings, url, f"run-{index}", clock)
            drain(dispatcher, clock)
    scrape = samples(generate_latest(metrics.registry).decode())
    assert value(scrape, "jewel_webhook_deliveries_total", outcome="delivered") == 2
    assert value(scrape, "jewel_webhook_deliveries_total", outcome="refused") == 1
    assert value(scrape, "jewel_webhook_deliveries_total", outcome="gave_up") == 1
    assert value(scrape, "jewel_webhook_deliveries_total", outcome="failed") == 0
