"""Where a local store keeps a request's artifacts: one folder per run (the IO manager)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jewel_dagster.storage_layout import artifact_path


def stored_path(store: Any, request_id: str, name: str, extension: str) -> str:
    """The path of the newest run's `name` in a LocalBlobStore (the flat path when none has one)."""
    folder = Path(store.root) / store.container / "requests" / request_id
    found = sorted(folder.glob(f"*/{name}.{extension}"), key=lambda p: p.stat().st_mtime_ns)
    if not found:
        return artifact_path(request_id, name, extension)
    return artifact_path(request_id, name, extension, found[-1].parent.name)
