"""With API keys on: the event stream and the artifacts of a workflow are its owner's alone."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from devtools.stack import Stack
from tests.support.answers import assert_refused, no_workflow
from tests.support.e2e_flows import CUP, PHOTO, finished
from tests.support.e2e_stack import ALPHA, BETA, launched_runs, poll
from tests.support.gpu_pool import held_pool
from tests.support.shared_stacks import TWO_CALLERS_STACK, SharedStacks, shared_stack

pytestmark = pytest.mark.e2e

A, B = ALPHA, BETA
BODY = {"originalImageBase64": PHOTO, "maskPoints": [CUP]}
ARTIFACTS = ("jewelry_mask.png", "canvas_transform.json")


@pytest.fixture(scope="module")
def stack(shared_stacks: SharedStacks) -> Iterator[Stack]:
    yield from shared_stack(shared_stacks, TWO_CALLERS_STACK)


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=60) as c:
        yield c


def _final_event(client: httpx.Client, workflow: str, headers: dict[str, str]) -> dict[str, object]:
    """The stream's `final` event (the workflow has ended, so the stream ends at once)."""
    with client.stream("GET", f"/workflow/{workflow}/events", headers=headers, timeout=120) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith(("event:", "data:"))]
    assert events[-2:-1] == ["event: final"], events
    return json.loads(events[-1].partition(":")[2])


def test_events_and_artifacts_are_the_owners_alone(client: httpx.Client, stack: Stack) -> None:
    """While its run runs (launched, held in the `gpu` pool's line: not a start still pending,
    which a check right after the POST would meet), and once it ended: another caller sees no
    workflow at all."""
    with held_pool(stack.env["DAGSTER_HOME"], waiting=0):
        started = client.post("/workflow/preprocess", json=BODY, headers=A)
        assert started.status_code == 200, started.text
        workflow = started.json()["workflowId"]
        (run,) = launched_runs(stack, workflow)
        assert run["status"] in ("QUEUED", "STARTING", "STARTED"), run
        for path in (f"/workflow/{workflow}", f"/workflow/{workflow}/events"):
            assert_refused(client.get(path, headers=B), 404, no_workflow(workflow))
        assert client.get(f"/workflow/{workflow}", headers=A).json()["status"] == "RUNNING"
    final = poll(client, workflow, finished, headers=A)[-1]
    assert final["status"] == "COMPLETED", final
    for headers, expected in ((B, 404), ({}, 401)):
        assert client.get(f"/workflow/{workflow}/events", headers=headers).status_code == expected
        for name in ARTIFACTS:
            denied = client.get(f"/workflow/{workflow}/artifacts/{name}", headers=headers)
            assert denied.status_code == expected, (name, denied.status_code, denied.text)
            assert not denied.content.startswith(b"\x89PNG")

    # The owner gets both.
    assert _final_event(client, workflow, A) == final
    mask = client.get(f"/workflow/{workflow}/artifacts/jewelry_mask.png", headers=A)
    assert mask.status_code == 200 and mask.headers["content-type"] == "image/png"
    assert mask.content.startswith(b"\x89PNG")
    transform = client.get(f"/workflow/{workflow}/artifacts/canvas_transform.json", headers=A)
    assert transform.status_code == 200 and transform.json()["source_width"] == 600


def test_blob_uris_of_another_callers_request_are_refused_without_telling_what_exists(client: httpx.Client) -> None:
    """Issue 14, finding 3: B once ran /generate on A's upload and downloaded it as its own."""
    started = client.post("/workflow/preprocess", json=BODY, headers=A)
    workflow = started.json()["workflowId"]
    final = poll(client, workflow, finished, headers=A)[-1]
    assert final["status"] == "COMPLETED", final
    image, mask = final["result"]["imageUri"], final["result"]["maskUri"]
    folder = image.rsplit("/", 1)[0]

    # Not an artifact (the upload, any other path): refused for everyone, owner included.
    for headers in (A, B):
        upload = client.post(
            "/workflow/generate", json={"imageUri": f"{folder}/upload", "maskUri": mask}, headers=headers
        )
        assert upload.status_code == 400 and "not an image artifact" in upload.json()["detail"], upload.text
    # A's artifacts, stored or not, answer B the same 404: no way to tell which paths exist.
    for uri in (image, f"{folder}/final_mask.png"):
        denied = client.post("/workflow/generate", json={"imageUri": uri, "maskUri": mask}, headers=B)
        assert denied.status_code == 404 and denied.json()["detail"] == f"no workflow {workflow!r}", denied.text
    # The owner continues the request as before.
    again = client.post("/workflow/generate", json={"imageUri": image, "maskUri": mask}, headers=A)
    assert again.status_code == 200 and again.json()["workflowId"] == workflow, again.text


def test_a_second_generate_while_the_first_runs_is_409(client: httpx.Client) -> None:
    started = client.post("/workflow/preprocess", json=BODY, headers=A)
    workflow = started.json()["workflowId"]
    result = poll(client, workflow, finished, headers=A)[-1]["result"]
    body = {"imageUri": result["imageUri"], "maskUri": result["maskUri"]}
    first = client.post("/workflow/generate", json=body, headers=A)
    assert first.status_code == 200, first.text
    second = client.post("/workflow/generate", json=body, headers=A)
    # The first generate takes seconds on the local backends: the second one finds it running.
    assert second.status_code == 409 and "still running" in second.json()["detail"], second.text
    assert poll(client, workflow, finished, headers=A)[-1]["status"] == "COMPLETED"


def test_a_reused_idempotency_key_with_another_body_is_422(client: httpx.Client) -> None:
    key = {"Idempotency-Key": f"retry-{PHOTO[-12:]}", **A}
    first = client.post("/workflow/preprocess", json=BODY, headers=key)
    assert first.status_code == 200, first.text
    same = client.post("/workflow/preprocess", json=BODY, headers=key)
    assert same.json()["workflowId"] == first.json()["workflowId"]
    other_body = client.post("/workflow/preprocess", json={**BODY, "maskPoints": [{**CUP, "x": 0.4}]}, headers=key)
    other_endpoint = client.post("/workflow/start", json=BODY, headers=key)
    for refused in (other_body, other_endpoint):
        assert refused.status_code == 422 and "different request" in refused.json()["detail"], refused.text
    poll(client, first.json()["workflowId"], finished, headers=A)
