"""imageUri / maskUri outside our storage: the generate endpoint never fetches them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.gateway_client import gateway_client

OURS = "local://jewelry-uploads/requests/jewelry-gen-x/upload"
# A well-formed image artifact URI: the mask's refusal comes first, before any ownership lookup.
ARTIFACT = (
    "local://jewelry-uploads/requests/jewelry-gen-00000000-0000-0000-0000-000000000000/background_removed_image.png"
)


@pytest.mark.parametrize(
    "uri",
    [
        "http://169.254.169.254/latest/meta-data",
        "https://example.com/ring.png",
        "file:///etc/passwd",
        "azure://jewelry-uploads/requests/x/upload",  # another scheme than the configured store's
        "local://other-container/requests/x/upload",
        "local://jewelry-uploads/../../etc/passwd",
        "local://jewelry-uploads/requests/%2e%2e/x",
        "local://jewelry-uploads/requests//x",
        "",
    ],
)
def test_foreign_uris_are_refused(tmp_path: Path, uri: str) -> None:
    with gateway_client(tmp_path) as client:
        response = client.post("/workflow/generate", json={"imageUri": uri, "maskUri": OURS})
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("imageUri"), response.text


@pytest.mark.parametrize("uri", ["https://example.com/mask.png", "local://other-container/requests/x/upload", ""])
def test_foreign_mask_uris_are_refused(tmp_path: Path, uri: str) -> None:
    with gateway_client(tmp_path) as client:
        response = client.post("/workflow/generate", json={"imageUri": ARTIFACT, "maskUri": uri})
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("maskUri"), response.text


def test_a_path_of_ours_that_is_not_an_artifact_is_refused(tmp_path: Path) -> None:
    """A request's upload (or any other path) is no input: only the image artifacts a run made."""
    with gateway_client(tmp_path) as client:
        response = client.post("/workflow/generate", json={"imageUri": OURS, "maskUri": OURS})
    assert response.status_code == 400 and "not an image artifact" in response.json()["detail"]
