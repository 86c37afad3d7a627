"""Issue 29, finding 8: retention also removes what no request folder holds: claims, stored webhook
URLs (with their credentials) and step logs; a launch that failed leaves no webhook URL behind."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from gateway.dagster_api.errors import DagsterUnavailable
from jewel_dagster.contract import PARTITION_TAG, PARTITIONS_NAME
from jewel_dagster.defs.retention import run_retention
from jewel_dagster.resources.blob_store import LocalBlobStore
from tests.support.gateway_client import FakeDagster, gateway_with_fake_dagster, start_body, stored_blobs

LEFTOVERS = ["claims/idempotency/abc.0.json", "claims/webhooks/run-1.0.json", "webhooks/0123abcd.json"]


def _age(root: Path, path: str, days: float) -> None:
    when = time.time() - days * 86400
    os.utime(root / path, (when, when))


def test_old_claims_and_webhook_urls_go_recent_ones_stay(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path / "blobs"))
    root = tmp_path / "blobs" / store.container
    for path in LEFTOVERS:
        store.put_path(path, b"{}", "application/json")
        _age(root, path, 40)
        store.put_path(path.replace(".json", "-new.json"), b"{}", "application/json")
    with dg.instance_for_test() as instance:
        report = run_retention(instance, store, 30, 100, 365, now=datetime.now(UTC))
    assert report.leftovers_removed == 3
    assert sorted(stored_blobs(tmp_path)) == sorted(
        f"{store.container}/" + p.replace(".json", "-new.json") for p in LEFTOVERS
    )


def test_a_removed_runs_step_logs_go_with_it(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path / "blobs"))
    with dg.instance_for_test() as instance:
        rid = f"jewelry-gen-{uuid.uuid4()}"
        instance.add_dynamic_partitions(PARTITIONS_NAME, [rid])
        run = instance.add_run(
            dg.DagsterRun(job_name="jewelry_generation", status=dg.DagsterRunStatus.SUCCESS, tags={PARTITION_TAG: rid})
        )
        manager = instance.compute_log_manager
        with manager.capture_logs(manager.build_log_key_for_run(run.run_id, "original_image")):
            print("step output")  # noqa: T201 - what the step log captures
        logs = Path(instance.root_directory) / "storage" / run.run_id
        assert logs.exists()
        later = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1)
        report = run_retention(instance, store, 30, 100, 365, now=later)
        assert report.runs_removed == 1 and not logs.exists()  # inside: the instance's folder goes with it


class _DownAtLaunch(FakeDagster):
    def launch(self, job_name: str, request_id: str, run_config: object, tags: object = None) -> str:
        raise DagsterUnavailable("connection refused")


@pytest.mark.parametrize("route", ["/workflow/start", "/workflow/preprocess"])
def test_a_launch_that_failed_leaves_no_webhook_url(tmp_path: Path, route: str) -> None:
    settings = {"webhook_secret": "s3cret", "webhook_allow_private": True, "start_in_background": False}
    with gateway_with_fake_dagster(tmp_path, **settings) as (client, _):
        client.app.state.runs = _DownAtLaunch()  # type: ignore[attr-defined]
        response = client.post(route, json=start_body(webhookUrl="http://user:pw@127.0.0.1:9/hook"))
    assert response.status_code == 503, response.text
    assert stored_blobs(tmp_path) == []
