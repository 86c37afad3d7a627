"""The gateway keeps nothing per Idempotency-Key in memory (issue 14, finding 7: the lock table
grew by one lock for every key ever seen)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.gateway_client import gateway_with_fake_dagster, start_body


def _collections_in(module_name: str) -> dict[str, int]:
    module = sys.modules[module_name]
    return {name: len(value) for name, value in vars(module).items() if isinstance(value, dict | list | set)}


def test_many_idempotency_keys_leave_no_table_behind(tmp_path: Path) -> None:
    with gateway_with_fake_dagster(tmp_path) as (client, fake):
        before = _collections_in("gateway.workflows.idempotency")
        for i in range(300):
            response = client.post("/workflow/preprocess", json=start_body(), headers={"Idempotency-Key": f"key-{i}"})
            assert response.status_code == 200, response.text
        after = _collections_in("gateway.workflows.idempotency")
    assert len(fake.launches) == 300
    assert after == before, {name: (before.get(name), size) for name, size in after.items()}
