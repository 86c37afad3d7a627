"""Issue 29, finding 5: per-caller quotas, so one tenant cannot starve the others."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import yaml

from tests.support.gateway_client import gateway_with_fake_dagster, start_body

A, B = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_caller_over_its_daily_quota_gets_429_while_another_starts_as_usual(tmp_path: Path) -> None:
    with gateway_with_fake_dagster(tmp_path, gateway_api_keys="key-a,key-b", workflows_per_day=2) as (client, _):
        first_started = time.perf_counter()
        assert client.post("/workflow/start", json=start_body(), headers=A).status_code == 200
        normal = time.perf_counter() - first_started
        assert client.post("/workflow/preprocess", json=start_body(), headers=A).status_code == 200
        over = client.post("/workflow/start", json=start_body(), headers=A)
        other_started = time.perf_counter()
        other = client.post("/workflow/start", json=start_body(), headers=B)
        other_took = time.perf_counter() - other_started
        usage = client.get("/usage", headers=A).json()
    assert over.status_code == 429, over.text
    assert "quota of 2 workflows a day" in over.json()["detail"] and int(over.headers["Retry-After"]) >= 1
    assert other.status_code == 200, other.text
    assert other_took < max(1.0, 3 * normal), (other_took, normal)
    assert usage["workflowsToday"] == 2 and usage["workflowsPerDay"] == 2 and usage["runsInFlight"] == 0


def test_a_caller_over_its_storage_quota_gets_429_naming_it(tmp_path: Path) -> None:
    photo = len(base64.b64decode(start_body()["originalImageBase64"]))
    settings = {"gateway_api_keys": "key-a,key-b", "stored_bytes_per_caller": 2 * photo + 10}
    with gateway_with_fake_dagster(tmp_path, **settings) as (client, dagster):
        codes = [client.post("/workflow/start", json=start_body(), headers=A).status_code for _ in range(3)]
        over = client.post("/workflow/start", json=start_body(), headers=A)
        other = client.post("/workflow/start", json=start_body(), headers=B)
        usage = client.get("/usage", headers=A).json()
    assert codes == [200, 200, 429], codes
    assert over.status_code == 429 and "storage quota" in over.json()["detail"] and "Retry-After" in over.headers
    assert other.status_code == 200
    assert usage["bytesStored"] == 2 * photo and usage["bytesStoredLimit"] == 2 * photo + 10


def test_usage_needs_a_key_and_shows_only_the_callers_figures(tmp_path: Path) -> None:
    with gateway_with_fake_dagster(tmp_path, gateway_api_keys="key-a,key-b") as (client, _):
        client.post("/workflow/start", json=start_body(), headers=A)
        assert client.get("/usage").status_code == 401
        mine, theirs = client.get("/usage", headers=A).json(), client.get("/usage", headers=B).json()
    assert mine["workflowsToday"] == 1 and theirs["workflowsToday"] == 0
    assert mine["workflowsPerDay"] == 1000 and mine["runsInFlightLimit"] == 2


def test_dagster_runs_at_most_the_limit_of_one_caller_at_once() -> None:
    """The run queue's own per-value tag limit on the owner tag: a caller's burst waits behind its
    own runs, not in front of everyone's."""
    from devtools.instance_config import load_overlays

    # The base alone, with PostgreSQL, with PostgreSQL and Celery (devtools.instance_config).
    for name in ("dagster.yaml", "dagster.postgres.yaml", "dagster.celery.yaml"):
        overlays = {"dagster.yaml": [], "dagster.postgres.yaml": [name]}.get(name, ["dagster.postgres.yaml", name])
        limits = load_overlays(overlays)["concurrency"]["runs"]["tag_concurrency_limits"]
        owner = [limit for limit in limits if limit["key"] == "jewel/owner"]
        assert owner == [{"key": "jewel/owner", "value": {"applyLimitPerUniqueValue": True}, "limit": 2}], name


def test_the_stack_writes_the_per_caller_limit_and_drops_it_without_keys() -> None:
    from devtools.stack import per_caller

    def owner_rules(env: dict[str, str]) -> list[object]:
        runs = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())["concurrency"]["runs"]
        per_caller(runs, env)
        return [limit["limit"] for limit in runs["tag_concurrency_limits"] if limit["key"] == "jewel/owner"]

    assert owner_rules({"GATEWAY_API_KEYS": "a", "RUNS_IN_FLIGHT_PER_CALLER": "3"}) == [3]
    assert owner_rules({"GATEWAY_API_KEYS": "a"}) == [2]
    assert owner_rules({"ALLOW_ANONYMOUS": "true"}) == []
