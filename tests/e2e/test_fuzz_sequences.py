"""Stateful fuzzing: start workflows, then act on the returned ids as their owner, as another
caller and with no key, in random orders. No answer may be a 5xx, and ownership must hold in
every order (issue 14: "stateful sequences ... with and without the owner's key").

The operation-by-operation fuzz pass (test_security.py) cannot reach this: its random bodies
never carry a usable photo, so no workflow id ever comes back to act on. Runs use the instant
backends: the pipeline's own work is not what is tested here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, rule, run_state_machine_as_test

from devtools.stack import Stack
from tests.support.e2e_flows import PHOTO
from tests.support.shared_stacks import TWO_CALLERS_STACK, SharedStacks, shared_stack

pytestmark = pytest.mark.e2e

CALLERS = {"alpha": {"X-API-Key": "key-alpha"}, "beta": {"Authorization": "Bearer key-beta"}, "nobody": {}}
ARTIFACTS = ["jewelry_mask.png", "canvas_transform.json", "flux_generation.png", "upload", "x.png"]

coordinates = st.floats(min_value=-0.5, max_value=1.5, allow_nan=False)
mask_points = st.lists(
    st.fixed_dictionaries({"x": coordinates, "y": coordinates, "label": st.sampled_from([0, 1, 1, 1, 2])}),
    min_size=0,
    max_size=4,
)
strokes = st.lists(
    st.fixed_dictionaries(
        {
            "points": st.lists(st.fixed_dictionaries({"x": coordinates, "y": coordinates}), min_size=0, max_size=4),
            "mode": st.sampled_from(["add", "remove", "smudge"]),
            "size": st.sampled_from([-1, 0, 8, 60, 300, 5000]),
        }
    ),
    max_size=2,
)


@pytest.fixture(scope="module")
def stack(shared_stacks: SharedStacks) -> Iterator[Stack]:
    yield from shared_stack(shared_stacks, TWO_CALLERS_STACK)


def test_random_sequences_on_started_workflows_keep_ownership_and_never_fail(stack: Stack) -> None:
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=stack.gateway_url, timeout=60) as http:

        def send(method: str, url: str, caller: str, **kwargs: Any) -> httpx.Response:
            response = http.request(method, url, headers=CALLERS[caller], **kwargs)
            statuses[response.status_code] += 1
            assert response.status_code < 500, (method, url, caller, response.status_code, response.text[:300])
            assert response.headers.get("content-type", "").startswith(("application/json", "image/png")), response
            return response

        class Sequences(RuleBasedStateMachine):
            workflows = Bundle("workflows")

            @rule(
                target=workflows,
                endpoint=st.sampled_from(["start", "preprocess"]),
                caller=st.sampled_from(["alpha", "beta"]),
                points=mask_points,
                brush=strokes,
            )
            def start(self, endpoint: str, caller: str, points: list[Any], brush: list[Any]) -> tuple[str, str]:
                """Any body: refused with a 4xx or started, as the rules say."""
                body = {"originalImageBase64": PHOTO, "maskPoints": points, "brushStrokes": brush}
                response = send("POST", f"/workflow/{endpoint}", caller, json=body)
                valid = (
                    any(p["label"] == 1 for p in points)
                    and all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 and p["label"] in (0, 1) for p in points)
                    and all(
                        s["points"] and s["mode"] != "smudge" and 0 < s["size"] <= 300
                        and all(0 <= q["x"] <= 1 and 0 <= q["y"] <= 1 for q in s["points"])
                        for s in brush
                    )
                )  # fmt: skip
                assert (response.status_code == 200) == valid, (response.status_code, response.text[:300], body)
                return (response.json()["workflowId"], caller) if response.status_code == 200 else ("", caller)

            @rule(
                target=workflows,
                endpoint=st.sampled_from(["start", "preprocess"]),
                caller=st.sampled_from(["alpha", "beta"]),
                x=st.floats(0.0, 1.0),
                y=st.floats(0.0, 1.0),
            )
            def start_valid(self, endpoint: str, caller: str, x: float, y: float) -> tuple[str, str]:
                """A valid body, so that sequences have workflows to act on."""
                body = {"originalImageBase64": PHOTO, "maskPoints": [{"x": x, "y": y, "label": 1}]}
                response = send("POST", f"/workflow/{endpoint}", caller, json=body)
                assert response.status_code == 200, response.text[:300]
                return (response.json()["workflowId"], caller)

            @rule(workflow=workflows, caller=st.sampled_from(list(CALLERS)))
            def read(self, workflow: tuple[str, str], caller: str) -> None:
                self._owned(send("GET", f"/workflow/{workflow[0] or 'none'}", caller), workflow, caller)

            @rule(workflow=workflows, caller=st.sampled_from(list(CALLERS)), name=st.sampled_from(ARTIFACTS))
            def artifact(self, workflow: tuple[str, str], caller: str, name: str) -> None:
                response = send("GET", f"/workflow/{workflow[0] or 'none'}/artifacts/{name}", caller)
                if caller != workflow[1] or not workflow[0]:
                    assert response.status_code in (401, 404), response.status_code

            @rule(workflow=workflows, caller=st.sampled_from(list(CALLERS)))
            def events(self, workflow: tuple[str, str], caller: str) -> None:
                url = f"/workflow/{workflow[0] or 'none'}/events"
                with http.stream("GET", url, headers=CALLERS[caller]) as response:
                    statuses[response.status_code] += 1
                    assert response.status_code < 500
                    first = next(response.iter_lines(), "") if response.status_code == 200 else ""
                self._owned(response, workflow, caller)
                assert response.status_code != 200 or first.startswith((":", "event:", "retry:")), first

            @rule(workflow=consumes(workflows), caller=st.sampled_from(list(CALLERS)))
            def cancel(self, workflow: tuple[str, str], caller: str) -> None:
                response = send("POST", f"/workflow/{workflow[0] or 'none'}/cancel", caller)
                self._owned(response, workflow, caller, ended_ok=True)

            def _owned(
                self, response: httpx.Response, workflow: tuple[str, str], caller: str, ended_ok: bool = False
            ) -> None:
                if caller == "nobody":
                    assert response.status_code == 401
                elif caller != workflow[1] or not workflow[0]:
                    assert response.status_code == 404, (response.status_code, response.text[:200])
                elif ended_ok:  # a cancel: done, the run had ended (409), or still stopping at the deadline (202)
                    assert response.status_code in (200, 202, 409), response.text[:200]
                    assert response.status_code != 202 or response.json()["status"] == "RUNNING", response.text
                else:
                    assert response.status_code == 200, response.text[:200]

        run_state_machine_as_test(
            Sequences,
            settings=settings(
                max_examples=15,
                stateful_step_count=12,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],  # each step is HTTP calls to a real stack
            ),
        )
    total = sum(statuses.values())
    print(f"stateful fuzz: {total} requests, statuses {dict(sorted(statuses.items()))}")
    assert total >= 100 and statuses[200] > 0 and statuses[404] > 0, statuses
