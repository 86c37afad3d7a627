"""The local blob store: round trip, missing blobs, and URIs that are not ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from jewel_dagster.storage import BlobNotFoundError, ForeignUriError, LocalBlobStore, artifact_path


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(root=str(tmp_path), container="jewelry-uploads")


def test_round_trip(store: LocalBlobStore) -> None:
    uri = store.put("requests/r1/upload", b"\x00bytes")
    assert uri == "local://jewelry-uploads/requests/r1/upload"
    assert store.get(uri) == b"\x00bytes"
    assert store.exists(uri)
    store.delete_path("requests/r1/upload")
    assert not store.exists(uri)


def test_missing_blob_is_a_clear_error(store: LocalBlobStore) -> None:
    with pytest.raises(BlobNotFoundError, match="no blob at local://jewelry-uploads/requests/x/y.png"):
        store.get("local://jewelry-uploads/requests/x/y.png")


@pytest.mark.parametrize(
    "uri",
    [
        "local://other-container/requests/r1/upload",
        "azure://jewelry-uploads/requests/r1/upload",
        "http://127.0.0.1/requests/r1/upload",
        "local://jewelry-uploads/../secrets",
        "local://jewelry-uploads/requests/../../etc/passwd",
        "local://jewelry-uploads//etc/passwd",
        "local://jewelry-uploads/",
        "/etc/passwd",
    ],
)
def test_uris_outside_the_container_are_refused(store: LocalBlobStore, uri: str) -> None:
    with pytest.raises(ForeignUriError):
        store.get(uri)


def test_artifact_paths_refuse_unsafe_request_ids() -> None:
    assert artifact_path("jewelry-gen-1", "final_mask", "png") == "requests/jewelry-gen-1/final_mask.png"
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ForeignUriError):
            artifact_path(bad, "final_mask", "png")
