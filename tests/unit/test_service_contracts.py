"""HTTP clients against the reference model server on loopback: parity, retries, failures."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import httpx
import numpy as np
import pytest

from jewel_dagster.contract import run_config_ops
from jewel_dagster.defs.assets import ALL_ASSETS, GEMINI_REASON
from jewel_dagster.resources.blob_store import BlobStore
from jewel_dagster.resources.http_services import HttpBackend, HttpSegmenter
from jewel_dagster.resources.selection import build_resources
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import strokes_path
from jewel_dagster.vision import imaging
from tests.support.artifacts import stored_path
from tests.support.instances import stack_storage_instance
from tests.support.photos import coffee_jpeg
from tests.support.servers import reference_servers, service_urls, set_knobs

ARRAYS = (
    "original_image",
    "resized_image",
    "background_removed_image",
    "jewelry_mask",
    "refined_mask",
    "final_mask",
    "flux_generation",
)
DOCS = ("canvas_transform", "zoom_check", "flux_metrics")
STROKE = {"points": [{"x": 0.05, "y": 0.1}, {"x": 0.15, "y": 0.1}], "mode": "add", "size": 40}


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str]]:
    """Both reference servers of the module, started at once: the classical one, and the one with
    trivial stand-ins (`instant_server`)."""
    with reference_servers([], ["--instant"]) as (classical, instant):
        yield classical, instant


@pytest.fixture(scope="module")
def server(servers: tuple[str, str]) -> str:
    return servers[0]


@pytest.fixture(scope="module")
def instant_server(servers: tuple[str, str]) -> str:
    """The reference server with trivial stand-ins: for the tests of retries, timeouts and
    failures, where what counts is the HTTP exchange, not the pixels."""
    return servers[1]


def _run(
    resources: dict[str, Any],
    rid: str,
    jewelry_mask: dict[str, Any] | None = None,
    warnings: list[str] | None = None,
) -> tuple[dg.ExecuteInProcessResult, BlobStore]:
    """`warnings`, when given, receives the run's log lines of level WARNING."""
    store: BlobStore = resources["blob_store"]
    upload = store.put(f"requests/{rid}/upload", coffee_jpeg())
    strokes = store.put(strokes_path(rid, "test"), json.dumps([STROKE]).encode())
    with stack_storage_instance() as instance:
        instance.add_dynamic_partitions("requests", [rid])
        result = dg.materialize(
            ALL_ASSETS,
            partition_key=rid,
            instance=instance,
            resources=resources,
            raise_on_error=False,
            run_config={
                "ops": run_config_ops(
                    {
                        "original_image": {"image_uri": upload},
                        "jewelry_mask": jewelry_mask or {"points": [{"x": 0.45, "y": 0.42, "label": 1}]},
                        "refined_mask": {"strokes_uri": strokes},
                    }
                )
            },
        )
        if warnings is not None:
            warnings += [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    return result, store


def _http_resources(tmp_path: Any, url: str, **extra: Any) -> dict[str, Any]:
    return build_resources(PipelineSettings(local_blob_root=str(tmp_path / "http"), **service_urls(url), **extra))


def _retries(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_UP_FOR_RETRY":
            counts[event.step_key] = counts.get(event.step_key, 0) + 1
    return counts


@dataclass(frozen=True)
class ClassicalRuns:
    """One request run twice on the classical vision: in-process, and through the HTTP clients
    against the classical reference server (whose SAM3 answers only the mask-from-points call),
    with what that server counted."""

    local: dg.ExecuteInProcessResult
    local_store: BlobStore
    remote: dg.ExecuteInProcessResult
    remote_store: BlobStore
    calls: dict[str, int]
    wire: dict[str, dict[str, int]]


@pytest.fixture(scope="module")
def classical_runs(server: str, tmp_path_factory: pytest.TempPathFactory) -> ClassicalRuns:
    """The module's two classical runs (about 5 CPU-s each), shared by the parity test and the
    SAM3-only metrics test: the same request, and a SAM3 that answers the old `/find-jewelry`
    with 404 (as a real SAM3 would) suits both."""
    tmp_path = tmp_path_factory.mktemp("classical")
    set_knobs(server, reject={"sam3/find-jewelry": 404})
    local, local_store = _run(build_resources(PipelineSettings(local_blob_root=str(tmp_path / "local"))), "parity")
    remote, remote_store = _run(_http_resources(tmp_path, server), "parity")
    calls = httpx.get(f"{server}/_stats").json()
    wire = httpx.get(f"{server}/_stats/wire").json()
    return ClassicalRuns(local, local_store, remote, remote_store, calls, wire)


def test_http_clients_match_the_local_run_pixel_for_pixel(classical_runs: ClassicalRuns) -> None:
    runs = classical_runs
    local, local_store, remote, remote_store = runs.local, runs.local_store, runs.remote, runs.remote_store
    assert local.success and remote.success
    for name in ARRAYS:
        a = imaging.decode_png(local_store.get_path(stored_path(local_store, "parity", name, "png")))
        b = imaging.decode_png(remote_store.get_path(stored_path(remote_store, "parity", name, "png")))
        assert a.shape == b.shape and np.array_equal(a, b), name
    for name in DOCS:
        a_doc = local_store.get_path(stored_path(local_store, "parity", name, "json"))
        b_doc = remote_store.get_path(stored_path(remote_store, "parity", name, "json"))
        assert json.loads(a_doc) == json.loads(b_doc), name
    assert runs.calls["sam3/segment"] == 2 and runs.calls["a100/generate"] == 1  # the mask, then the metrics
    # The default wire is binary: no call of the run went as base64 JSON (tests/unit/test_service_wire.py).
    received = runs.wire
    assert received and all(set(c) & {"multipart/form-data"} and "application/json" not in c for c in received.values())
    # With the real generators elsewhere and no key, Gemini is not materialized (no JSON null),
    # and the Flux image's metadata says why.
    materialized = {e.asset_key.path[-1]: e.materialization for e in remote.get_asset_materialization_events()}
    assert "gemini_generation" not in materialized
    assert materialized["flux_generation"].metadata[GEMINI_REASON].value
    backends = {name: m.metadata.get("backend") for name, m in materialized.items()}
    assert backends["jewelry_mask"].value.startswith("http:")


# The server draws its 503s from one generator seeded here, call after call (the in-process run
# makes its calls in one order). With the step's RetryPolicy alone, seeds 0-45 failed 7 runs of
# 46 (3, 4, 13, 28, 31, 44, 45: a step's 503s outlasted its retries, each of which made the
# step's calls again); with each call retried on its own, all 46 completed (2026-12-05, a scan
# of the whole pipeline per seed). Seed 3 failed `generate_images` after its three retries; now
# five of its twelve calls are retries and no step runs again.
FLAKY_SEED = 3
PIPELINE_CALLS = 7  # resize, zoom check, background, mask, refinement, Flux, the metrics' SAM3


def test_a_30_percent_failure_rate_completes_with_each_call_retried(tmp_path: Any, instant_server: str) -> None:
    set_knobs(instant_server, failure_rate=0.3, seed=FLAKY_SEED)
    resources = _http_resources(tmp_path, instant_server)
    # Waits of 50 ms instead of 0.5-1.25 s: the draws do not depend on them (6.8 s -> ~3.5 s).
    for name, resource in resources.items():
        if isinstance(resource, HttpBackend):
            resources[name] = type(resource)(**{**resource.model_dump(), "retry_wait_seconds": 0.05})
    warnings: list[str] = []
    result, _ = _run(resources, "flaky", warnings=warnings)
    assert result.success
    assert _retries(result) == {}, "each 503 is retried by its call: no step runs again"
    calls = sum(httpx.get(f"{instant_server}/_stats").json().values())
    assert calls > PIPELINE_CALLS, f"the 503s must have been retried: {calls} calls"
    # Every retry is in the run's log, those of the call threads while the step stored an output too.
    retried = [line for line in warnings if "answered 503" in line and " of 3 in " in line]
    assert len(retried) == calls - PIPELINE_CALLS, warnings


# Only the SAM3 client (the service that hangs) gets this timeout; the others keep the default.
# Its calls are full-canvas (about 5 MP) uploads answered by the instant server's disc: httpx
# times each read and write, not the whole call, so 3 s is a wide margin over any one of them on
# a loaded machine, yet far below the hang it has to cut; the test waits it out once (it was
# 10 s for every client, 20 s before). The hang ends on its own after HANG_SECONDS, so a timeout
# that does not work fails the test (no retry) instead of hanging it.
HANG_TIMEOUT = 3.0
HANG_SECONDS = 150.0


def test_a_hang_is_cut_by_the_timeout_and_retried(tmp_path: Any, instant_server: str) -> None:
    set_knobs(instant_server, hang={"sam3/segment": 1}, hang_seconds=HANG_SECONDS)
    resources = _http_resources(tmp_path, instant_server)
    resources["segmenter"] = HttpSegmenter(base_url=resources["segmenter"].base_url, timeout_seconds=HANG_TIMEOUT)
    start = time.monotonic()
    result, _ = _run(resources, "hang")
    elapsed = time.monotonic() - start
    assert result.success
    assert _retries(result).get("segment_jewelry") == 1
    assert HANG_TIMEOUT <= elapsed < HANG_SECONDS, elapsed  # cut by the timeout, not by the hang ending
    assert httpx.get(f"{instant_server}/_stats").json()["sam3/segment"] == 3  # the hung call, its retry, the metrics


def test_a_permanent_400_fails_at_once_with_the_services_message(tmp_path: Any, instant_server: str) -> None:
    set_knobs(instant_server, reject={"a100/generate": 400})
    result, _ = _run(_http_resources(tmp_path, instant_server), "reject")
    assert not result.success
    assert "generate_images" not in _retries(result)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.event_specific_data.error.message
    assert failure.step_key == "generate_images"
    assert "FluxGenerator" in message and "400" in message and "rejected the request" in message
    assert httpx.get(f"{instant_server}/_stats").json()["a100/generate"] == 1


def test_metrics_need_only_sam3_mask_generation(classical_runs: ClassicalRuns) -> None:
    """A SAM3 with nothing but the reference's mask-from-points call: the request completes
    with metrics (the old `/find-jewelry` is answered 404, as a real SAM3 would)."""
    result, store = classical_runs.remote, classical_runs.remote_store
    assert result.success
    metrics = json.loads(store.get_path(stored_path(store, "parity", "flux_metrics", "json")))
    assert set(metrics) == {"precision", "recall", "iou", "growth_ratio"} and metrics["iou"] >= 0.9
    calls = classical_runs.calls
    assert calls.get("sam3/segment") == 2 and "sam3/find-jewelry" not in calls  # the mask, then the metrics
    (check,) = result.get_asset_check_evaluations()
    assert check.passed


def test_a_metrics_failure_keeps_the_images_and_says_why(tmp_path: Any, instant_server: str) -> None:
    """SAM3 answers 400 to the metrics call (the mask is supplied, so it is SAM3's only call):
    the run succeeds with both images; flux_metrics is not materialized (no JSON null shown as
    measured), and a failed check says why."""
    set_knobs(instant_server, reject={"sam3/segment": 400, "sam3/find-jewelry": 400})
    resources = _http_resources(tmp_path, instant_server)
    store: BlobStore = resources["blob_store"]
    photo = imaging.decode_image(coffee_jpeg())
    mask = np.zeros(photo.shape[:2], dtype=np.uint8)
    h, w = mask.shape
    mask[h // 3 : h // 2, w // 3 : w // 2] = 255
    mask_uri = store.put("requests/metrics-fail/supplied.png", imaging.encode_png(mask))
    result, store = _run(resources, "metrics-fail", jewelry_mask={"mask_uri": mask_uri})
    assert result.success
    assert store.exists_path(stored_path(store, "metrics-fail", "flux_generation", "png"))
    assert not store.exists_path(stored_path(store, "metrics-fail", "flux_metrics", "json"))
    assert "flux_metrics" not in {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    reason = check.metadata["reason"].value
    assert isinstance(reason, str) and "400" in reason and "rejected" in reason
