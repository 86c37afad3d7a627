"""The COMPLETED result beyond the reference's fields: why metrics are null, which backends made it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from gateway.cli import describe_backends
from gateway.results import ResultReader
from jewel_dagster.resources.blob_store import LocalBlobStore
from jewel_dagster.storage_layout import artifact_path
from jewel_dagster.vision import imaging

RID = "jewelry-gen-00000000-0000-0000-0000-000000000001"


def _store_generation(store: LocalBlobStore, metrics: object) -> None:
    image = np.full((32, 24, 3), 200, dtype=np.uint8)
    for name in ("background_removed_image", "jewelry_mask", "final_mask", "flux_generation"):
        store.put(artifact_path(RID, name, "png"), imaging.encode_png(image), "image/png")
    store.put(artifact_path(RID, "gemini_generation", "json"), b"null", "application/json")
    store.put(artifact_path(RID, "flux_metrics", "json"), json.dumps(metrics).encode(), "application/json")


def test_null_metrics_come_with_the_reason_and_no_internal_address(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path), container="jewelry-uploads")
    _store_generation(store, None)
    reason = "the segmenter could not measure the Flux image: Segmenter (http://10.0.0.7:9000/sam3/segment) said 400"
    check = {"passed": False, "status": "FAILED", "violations": f"metrics unavailable: {reason}", "reason": reason}
    result = ResultReader(store).result_of(RID, "run-1", "jewelry_generation", lambda _: check)
    assert result["flux_result_base64"] and result["flux_metrics"] is None
    assert result["flux_metrics_error"].startswith("the segmenter could not measure the Flux image")
    assert "10.0.0.7" not in result["flux_metrics_error"] and "[internal address]" in result["flux_metrics_error"]
    assert "10.0.0.7" not in json.dumps(result)  # nor in the check's violations and reason


def test_measured_metrics_carry_no_error_field(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path), container="jewelry-uploads")
    metrics = {"precision": 1.0, "recall": 1.0, "iou": 1.0, "growth_ratio": 1.0}
    _store_generation(store, metrics)
    check = {"passed": True, "status": "SUCCEEDED", "violations": "none"}
    result = ResultReader(store).result_of(RID, "run-1", "jewelry_generation", lambda _: check)
    assert result["flux_metrics"] == metrics and "flux_metrics_error" not in result


def test_backends_name_each_part_without_internal_addresses(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path), container="jewelry-uploads")
    metrics = {"precision": 1.0, "recall": 1.0, "iou": 1.0, "growth_ratio": 1.0}
    _store_generation(store, metrics)
    recorded = {  # what the materializations' metadata say (`backend`, or `model` for a null image)
        "resized_image": "local-classical",
        "jewelry_mask": "http:http://10.0.0.7:9000/sam3",
        "flux_generation": "local-studio-flux",
        "gemini_generation": "gemini:gemini-2.5-flash-image",
    }
    asked: list[tuple[str, ...]] = []

    def read_backends(request_id: str, assets: Sequence[str]) -> dict[str, str]:
        asked.append(tuple(assets))
        return {a: recorded[a] for a in assets if a in recorded}

    check = {"passed": True, "status": "SUCCEEDED", "violations": "none"}
    plain = ResultReader(store).result_of(RID, "run-1", "jewelry_generation", lambda _: check)
    result = ResultReader(store).result_of(
        RID, "run-1", "jewelry_generation", lambda _: check, read_backends=read_backends
    )
    assert result["backends"] == {
        "imageManipulator": "local-classical",
        "sam3": "http",  # a model service: its address is internal
        "flux": "local-studio-flux",
        "gemini": "gemini:gemini-2.5-flash-image",
    }
    assert "10.0.0.7" not in json.dumps(result)
    assert plain["backends"] == {}
    # The reference's fields are untouched, byte for byte.
    for key in ("flux_result_base64", "gemini_result_base64", "flux_metrics"):
        assert json.dumps(result[key]) == json.dumps(plain[key])
    assert set(asked[0]) >= {"flux_generation", "gemini_generation", "jewelry_mask", "refined_mask"}


def test_the_cli_names_the_backends() -> None:
    line = describe_backends({"backends": {"sam3": "local-grabcut", "flux": "http"}})
    assert line == "backends: sam3=local-grabcut, flux=http"
    assert describe_backends({}) == "backends: not recorded"


def test_generated_images_are_answered_from_the_jpeg_their_step_stored(tmp_path: Path) -> None:
    """The IO manager stores each generated image's JPEG with its PNG; the result hands that
    JPEG out as it is (no PNG decode and JPEG encode in the gateway, ~0.1 s an image), and
    images stored before renditions existed are still re-encoded."""
    import base64

    import dagster as dg

    from jewel_dagster.resources.io_manager import BlobIOManager
    from jewel_dagster.storage_layout import jpeg_rendition_path

    store = LocalBlobStore(root=str(tmp_path), container="jewelry-uploads")
    _store_generation(store, None)
    flux = np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    manager = BlobIOManager(blob_store=store)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("requests", [RID])
        context = dg.build_output_context(
            asset_key=dg.AssetKey("flux_generation"),
            partition_key=RID,
            run_id="run-2",
            asset_partitions_def=dg.DynamicPartitionsDefinition(name="requests"),
            instance=instance,
        )
        manager.handle_output(context, flux)
    png = artifact_path(RID, "flux_generation", "png", "run-2")
    stored = store.get_path(jpeg_rendition_path(png))
    assert stored == imaging.encode_jpeg(flux)  # what the gateway would have encoded

    reader = ResultReader(store)
    check = {"passed": True, "status": "SUCCEEDED", "violations": "none"}
    fresh = reader.result_of(RID, "run-2", "jewelry_generation", lambda _: check)
    assert base64.b64decode(fresh["flux_result_base64"]) == stored
    store.put(jpeg_rendition_path(png), b"the stored rendition", "image/jpeg")  # answered as it is
    again = ResultReader(store).result_of(RID, "run-2", "jewelry_generation", lambda _: check)
    assert base64.b64decode(again["flux_result_base64"]) == b"the stored rendition"
    older = ResultReader(store).result_of(RID, "run-1", "jewelry_generation", lambda _: check)  # no rendition
    assert base64.b64decode(older["flux_result_base64"]) == imaging.encode_jpeg(np.full((32, 24, 3), 200, np.uint8))


def test_gemini_and_metrics_come_from_the_run_that_made_the_flux_image(tmp_path: Path) -> None:
    """Gemini absent and metrics not measured are not materialized (no JSON null): the result
    must then say null, not hand out the Gemini image or metrics of an earlier run."""
    store = LocalBlobStore(root=str(tmp_path), container="jewelry-uploads")
    image = imaging.encode_png(np.full((32, 24, 3), 200, dtype=np.uint8))
    metrics = {"precision": 1.0, "recall": 1.0, "iou": 1.0, "growth_ratio": 1.0}
    for name in ("background_removed_image", "jewelry_mask", "final_mask", "flux_generation", "gemini_generation"):
        store.put(artifact_path(RID, name, "png", "run-1"), image, "image/png")
    store.put(artifact_path(RID, "flux_metrics", "json", "run-1"), json.dumps(metrics).encode())
    store.put(artifact_path(RID, "flux_generation", "png", "run-2"), image, "image/png")  # a regeneration
    located = {name: artifact_path(RID, name, "png", "run-1") for name in ("gemini_generation", "final_mask")}
    located["flux_metrics"] = artifact_path(RID, "flux_metrics", "json", "run-1")
    check = {"passed": False, "status": "FAILED", "violations": "metrics unavailable: x", "reason": "x"}

    newest = ResultReader(store).result_of(RID, "run-2", "jewelry_regenerate", lambda _: check, located.get)
    assert newest["flux_result_base64"]
    assert newest["gemini_result_base64"] is None and newest["flux_metrics"] is None
    assert newest["flux_metrics_error"] == "x"

    # A re-execution that did not make the images reads them, and what came with them, from the run that did.
    located["flux_generation"] = artifact_path(RID, "flux_generation", "png", "run-1")
    rerun = ResultReader(store).result_of(RID, "run-3", "jewelry_generation", lambda _: check, located.get)
    assert rerun["gemini_result_base64"] and rerun["flux_metrics"] == metrics


def test_a_finished_runs_result_is_read_once_per_run_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GET of a COMPLETED workflow must not re-read its check, backends, paths and JPEGs each
    time (issue 28: 17 GET/s, one materialization query per asset each): once per run id."""
    store = LocalBlobStore(root=str(tmp_path), container="jewelry-uploads")
    _store_generation(store, {"precision": 1.0, "recall": 1.0, "iou": 1.0, "growth_ratio": 1.0})
    reads: list[str] = []
    blob_reads: list[str] = []
    get_path = LocalBlobStore.get_path

    def counted_get(self: LocalBlobStore, path: str) -> bytes:
        blob_reads.append(path)
        return get_path(self, path)

    monkeypatch.setattr(LocalBlobStore, "get_path", counted_get)

    def read_check(request_id: str) -> dict[str, object]:
        reads.append("check")
        return {"passed": True, "status": "SUCCEEDED", "violations": "none"}

    def locate(asset: str) -> str | None:
        reads.append(f"path:{asset}")
        return None

    def read_backends(request_id: str, assets: Sequence[str]) -> dict[str, str]:
        reads.append("backends")
        return {}

    reader = ResultReader(store)
    answers = [
        reader.result_of(RID, "run-1", "jewelry_generation", read_check, locate, read_backends) for _ in range(5)
    ]
    assert all(a == answers[0] for a in answers) and answers[0]["flux_result_base64"]
    assert reads.count("check") == 1 and reads.count("backends") == 1, reads
    once = len(blob_reads)
    assert once > 0
    reader.result_of(RID, "run-1", "jewelry_generation", read_check, locate, read_backends)
    assert len(blob_reads) == once, "the blobs are read once"
    reader.result_of(RID, "run-2", "jewelry_generation", read_check, locate, read_backends)  # a newer run
    assert reads.count("check") == 2 and len(blob_reads) > once


class _SigningStore(LocalBlobStore):
    """A local store that signs as Azurite inside docker-compose would: at a host only the
    compose network resolves."""

    def signed_url(self, path: str, lifetime: object) -> str | None:
        return f"http://azurite:10000/devstoreaccount1/{self.container}/{path}?se=2026-12-05&sig=abc%2B"


def test_result_urls_point_where_a_client_can_fetch_them(tmp_path: Path) -> None:
    """Issue 31: in docker-compose the signed URLs named azurite:10000, which no client resolves.
    RESULT_URL_BASE moves them onto a public base (the signature kept), or onto the gateway's
    artifact route of this run's image."""
    store = _SigningStore(root=str(tmp_path), container="jewelry-uploads")
    _store_generation(store, None)
    image = imaging.encode_png(np.full((32, 24, 3), 100, dtype=np.uint8))
    store.put(artifact_path(RID, "flux_generation", "png", "run-1"), image, "image/png")
    check = {"passed": True, "status": "SUCCEEDED", "violations": "none"}

    def url(base: str) -> str:
        result = ResultReader(store, url_base=base).result_of(RID, "run-1", "jewelry_generation", lambda _: check)
        return str(result["flux_result_url"])

    assert url("").startswith("http://azurite:10000/devstoreaccount1/jewelry-uploads/")
    public = url("https://blobs.shop.example/store/")
    assert public.startswith("https://blobs.shop.example/store/devstoreaccount1/jewelry-uploads/requests/")
    assert public.endswith("?se=2026-12-05&sig=abc%2B") and "azurite" not in public
    assert url("gateway") == f"/workflow/{RID}/artifacts/flux_generation.png?runId=run-1"


def test_a_gateway_result_url_names_no_run_whose_folder_does_not_hold_the_image(tmp_path: Path) -> None:
    """Images stored before runs had folders: the artifact route's newest value, not a run's 404."""
    store = LocalBlobStore(root=str(tmp_path), container="jewelry-uploads")
    _store_generation(store, None)
    check = {"passed": True, "status": "SUCCEEDED", "violations": "none"}
    result = ResultReader(store, url_base="gateway").result_of(RID, "run-1", "jewelry_generation", lambda _: check)
    assert result["flux_result_url"] == f"/workflow/{RID}/artifacts/flux_generation.png"
    assert "gemini_result_url" not in result  # Gemini absent (JSON null): nothing to link to
