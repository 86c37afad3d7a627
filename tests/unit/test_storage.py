"""One storage contract, run against the local folder store and Azurite."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from jewel_dagster.resources.blob_store import (
    AzureBlobStore,
    BlobNotFoundError,
    BlobStore,
    ForeignUriError,
    LocalBlobStore,
)
from jewel_dagster.storage_layout import artifact_path
from tests.support.infra import azurite


@pytest.fixture(scope="module")
def azurite_connection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with azurite(tmp_path_factory.mktemp("azurite")) as connection:
        yield connection


@pytest.fixture(params=["local", "azurite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(root=str(tmp_path), container="jewelry-uploads")
    connection = request.getfixturevalue("azurite_connection")
    return AzureBlobStore(connection_string=connection, container=f"c{tmp_path.name[-20:].lower().replace('_', '')}")


def test_round_trip(store: BlobStore) -> None:
    uri = store.put("requests/r1/upload", b"\x00bytes", "image/jpeg")
    assert uri == f"{store.scheme}://{store.container}/requests/r1/upload"
    assert store.get(uri) == b"\x00bytes"
    assert store.exists(uri)
    store.put("requests/r1/upload", b"replaced")
    assert store.get(uri) == b"replaced"
    store.delete_path("requests/r1/upload")
    store.delete_path("requests/r1/upload")  # idempotent
    assert not store.exists(uri)


def test_a_folder_is_listed_and_removed_without_touching_its_neighbours(store: BlobStore) -> None:
    """What retention relies on: a request's folder goes, a request whose id shares its prefix stays."""
    for path in ("requests/r1/a.png", "requests/r1/run/b.png", "requests/r10/c.png"):
        store.put_path(path, b"x", "image/png")
    assert sorted(b.path for b in store.list_prefix("requests/r1/")) == ["requests/r1/a.png", "requests/r1/run/b.png"]
    assert store.delete_prefix("requests/r1/") == 2
    assert store.delete_prefix("requests/r1/") == 0  # idempotent
    assert [b.path for b in store.list_prefix("requests/")] == ["requests/r10/c.png"]


def test_missing_blob_is_a_clear_error(store: BlobStore) -> None:
    uri = f"{store.scheme}://{store.container}/requests/x/y.png"
    with pytest.raises(BlobNotFoundError, match=f"no blob at {uri}"):
        store.get(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "{scheme}://other-container/requests/r1/upload",
        "{other}://{container}/requests/r1/upload",
        "http://127.0.0.1/requests/r1/upload",
        "{scheme}://{container}/../secrets",
        "{scheme}://{container}/requests/../../etc/passwd",
        "{scheme}://{container}//etc/passwd",
        "{scheme}://{container}/",
        "/etc/passwd",
    ],
)
def test_uris_outside_the_container_are_refused(store: BlobStore, uri: str) -> None:
    other = "azure" if store.scheme == "local" else "local"
    with pytest.raises(ForeignUriError):
        store.get(uri.format(scheme=store.scheme, other=other, container=store.container))


def test_signed_urls(store: BlobStore) -> None:
    store.put("requests/r2/flux_generation.png", b"png-bytes", "image/png")
    url = store.signed_url("requests/r2/flux_generation.png", timedelta(minutes=5))
    if isinstance(store, LocalBlobStore):
        assert url is None  # a folder has no URL a browser could use
    else:
        assert url is not None and "sig=" in url
        assert httpx.get(url, timeout=10).content == b"png-bytes"
        unsigned = url.split("?")[0]
        assert httpx.get(unsigned, timeout=10).status_code in (401, 403, 404)


def test_artifact_paths_refuse_unsafe_request_ids() -> None:
    assert artifact_path("jewelry-gen-1", "final_mask", "png") == "requests/jewelry-gen-1/final_mask.png"
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ForeignUriError):
            artifact_path(bad, "final_mask", "png")


def test_create_is_won_by_exactly_one_of_many_concurrent_callers(store: BlobStore) -> None:
    """Gateway replicas claim idempotency keys and webhooks with it: one winner, whoever races."""
    from concurrent.futures import ThreadPoolExecutor

    path = "claims/race.json"
    with ThreadPoolExecutor(max_workers=8) as pool:
        won = list(pool.map(lambda i: store.create_path(path, f"{i}".encode(), "application/json"), range(16)))
    assert won.count(True) == 1
    assert store.get_path(path) == str(won.index(True)).encode()
    assert store.create_path(path, b"again", "application/json") is False
