"""The gateway keeps nothing per Idempotency-Key in memory (issue 14, finding 7: the lock table
grew by one lock for every key ever seen)."""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import httpx

from gateway.workflows import idempotency
from tests.support.gateway_client import gateway_with_fake_dagster, start_body

_IDEMPOTENCY_CODE = str(Path(idempotency.__file__).resolve())


def _collections_in(module_name: str) -> dict[str, int]:
    module = sys.modules[module_name]
    return {name: len(value) for name, value in vars(module).items() if isinstance(value, dict | list | set)}


def _kept_by_idempotency(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes still allocated from a line of gateway/workflows/idempotency.py (where a lock,
    a cache entry or a record made for a key would be allocated, whatever holds it)."""
    mine = snapshot.filter_traces([tracemalloc.Filter(True, _IDEMPOTENCY_CODE)])
    return sum(stat.size for stat in mine.statistics("filename"))


def test_many_idempotency_keys_leave_no_table_behind(tmp_path: Path) -> None:
    """Neither a table of the module (what issue 14 found) nor memory allocated by the module's
    code and kept anywhere (an lru_cache of locks, a closure, an object on app.state) grows with
    the keys: 300 keys more keep no more than a few hundred bytes between them."""

    def keyed(client: httpx.Client, keys: range) -> None:
        for i in keys:
            response = client.post("/workflow/preprocess", json=start_body(), headers={"Idempotency-Key": f"key-{i}"})
            assert response.status_code == 200, response.text

    with gateway_with_fake_dagster(tmp_path) as (client, fake):
        tracemalloc.start()
        try:
            keyed(client, range(50))  # the first keys' one-off costs (imports, caches of the code's own)
            before = _kept_by_idempotency(tracemalloc.take_snapshot())
            tables_before = _collections_in(idempotency.__name__)
            keyed(client, range(50, 350))
            after = _kept_by_idempotency(tracemalloc.take_snapshot())
            tables_after = _collections_in(idempotency.__name__)
        finally:
            tracemalloc.stop()
    assert len(fake.launches) == 350
    assert tables_after == tables_before, {name: (tables_before.get(name), size) for name, size in tables_after.items()}
    print(f"\nkept by idempotency.py: {before} B after 50 keys, {after} B after 350")
    assert after - before < 300 * 8, f"{after - before} B more kept after 300 keys more"
