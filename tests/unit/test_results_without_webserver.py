"""With STATUS_SOURCE=storage a finished request's answer is read from Dagster's storage: a
COMPLETED one's result with its `fidelity` check verdict, a FAILED one's step and message. A
gateway started while the webserver is down (nothing cached) answers them, as docs/operations.md
says GET does while the webserver restarts."""

# No `from __future__ import annotations` here: Dagster reads the asset's annotations at run time.
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from gateway.dagster_api.client import DagsterRuns
from jewel_dagster.contract import CHECK_NAME, PARTITION_TAG, PARTITIONS_NAME, WILL_RETRY_TAG, AssetName
from jewel_dagster.storage_layout import artifact_path
from tests.support.gateway_client import gateway_client
from tests.support.instances import home_instance

REQUESTS = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)


class Verdict(dg.Config):
    passed: bool
    reason: str = ""


@dg.asset(
    name=str(AssetName.FLUX_METRICS),
    partitions_def=REQUESTS,
    check_specs=[dg.AssetCheckSpec(CHECK_NAME, asset=str(AssetName.FLUX_METRICS), partitions_def=REQUESTS)],
)
def measured(config: Verdict) -> Iterator[dg.Output[int] | dg.AssetCheckResult]:
    """Stands in for the pipeline's metrics step: its check carries the same metadata labels."""
    yield dg.Output(1)
    texts = {"violations": "iou 0.1 < 0.5" if not config.passed else "none"}
    yield dg.AssetCheckResult(
        check_name=CHECK_NAME,
        passed=config.passed,
        metadata={"iou": 0.1, **texts, **({"reason": config.reason} if config.reason else {})},
    )


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    with home_instance(tmp_path, monkeypatch) as found:
        yield found


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 150, 30)).save(buf, "PNG")
    return buf.getvalue()


def _completed(instance: dg.DagsterInstance, rid: str, passed: bool, reason: str = "") -> str:
    """A request's run, ended SUCCESS, that evaluated the check on the request's partition."""
    instance.add_dynamic_partitions(PARTITIONS_NAME, [rid])
    result = dg.materialize(
        [measured],
        partition_key=rid,
        instance=instance,
        tags={PARTITION_TAG: rid},
        run_config={"ops": {str(AssetName.FLUX_METRICS): {"config": {"passed": passed, "reason": reason}}}},
    )
    assert result.success
    return result.run_id


@pytest.mark.parametrize(
    ("passed", "reason", "status"),
    [(True, "", "SUCCEEDED"), (False, "", "FAILED"), (False, "SAM3 (http://10.0.0.7:9000) timed out", "FAILED")],
)
def test_a_fresh_gateway_answers_a_completed_result_while_the_webserver_is_down(
    tmp_path: Path, instance: dg.DagsterInstance, passed: bool, reason: str, status: str
) -> None:
    rid = f"jewelry-gen-{uuid.uuid4()}"
    run_id = _completed(instance, rid, passed, reason)
    # gateway_client points the gateway at a port nothing listens on: the webserver is down.
    with gateway_client(tmp_path, status_source="storage") as client:
        runs: DagsterRuns = client.app.state.runs  # type: ignore[attr-defined]
        assert not runs.ping(timeout=1.0)
        store = client.app.state.store  # type: ignore[attr-defined]
        store.put(artifact_path(rid, AssetName.FLUX_GENERATION, "png", run_id), _png())
        answer = client.get(f"/workflow/{rid}")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "COMPLETED"
        assert body["result"]["flux_result_base64"]
        check = body["result"]["checks"][CHECK_NAME]
        expected = {
            "passed": passed,
            "status": status,
            "violations": "none" if passed else "iou 0.1 < 0.5",
            "runId": run_id,
        }
        if reason:  # its address hidden, as over GraphQL
            expected["reason"] = check["reason"]
            assert "10.0.0.7" not in check["reason"] and "SAM3" in check["reason"]
        assert check == expected
        if reason:
            assert "10.0.0.7" not in body["result"]["flux_metrics_error"]


@dg.asset(name=str(AssetName.JEWELRY_MASK), partitions_def=REQUESTS)
def segmented() -> None:
    """Fails as a service step does."""
    raise RuntimeError("SAM3 (http://10.0.0.7:9000/sam3/segment) timed out")


def test_a_fresh_gateway_answers_a_failed_request_while_the_webserver_is_down(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    rid = f"jewelry-gen-{uuid.uuid4()}"
    instance.add_dynamic_partitions(PARTITIONS_NAME, [rid])
    result = dg.materialize(
        [segmented],
        partition_key=rid,
        instance=instance,
        tags={PARTITION_TAG: rid, WILL_RETRY_TAG: "false"},  # final: no run retry follows
        raise_on_error=False,
    )
    assert not result.success
    with gateway_client(tmp_path, status_source="storage") as client:
        runs: DagsterRuns = client.app.state.runs  # type: ignore[attr-defined]
        assert not runs.ping(timeout=1.0)
        # What GraphQLRunReader.failure_of makes of the same events: the step, the cause first
        # (Dagster wraps the step's error in "Error occurred while executing op ...").
        step, message = runs.failure_of(result.run_id)
        assert step == AssetName.JEWELRY_MASK
        assert message.startswith("RuntimeError: SAM3 (http://10.0.0.7:9000/sam3/segment) timed out ("), message
        answer = client.get(f"/workflow/{rid}")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "FAILED"
        assert "SAM3" in body["error"] and "10.0.0.7" not in body["error"]  # its address hidden
