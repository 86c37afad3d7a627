"""With API keys on: the event stream and the artifacts of a workflow are its owner's alone."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from devtools.stack import Stack
from tests.support.e2e_flows import CUP, PHOTO, finished
from tests.support.e2e_stack import poll, running_stack

pytestmark = pytest.mark.e2e

A = {"X-API-Key": "key-alpha"}
B = {"Authorization": "Bearer key-beta"}
BODY = {"originalImageBase64": PHOTO, "maskPoints": [CUP]}
ARTIFACTS = ("jewelry_mask.png", "canvas_transform.json")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "GATEWAY_API_KEYS": "key-alpha,key-beta",
        "RATE_LIMIT_PER_MINUTE": "100000",
        "REGENERATION_SENSOR_ENABLED": "false",
    }
    with running_stack(tmp_path_factory.mktemp("owners"), env) as running:
        yield running


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


def test_events_and_artifacts_are_the_owners_alone(client: httpx.Client) -> None:
    started = client.post("/workflow/preprocess", json=BODY, headers=A)
    assert started.status_code == 200, started.text
    workflow = started.json()["workflowId"]

    # While it runs, and once it ended: another caller sees no workflow at all.
    assert client.get(f"/workflow/{workflow}/events", headers=B).status_code == 404
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
