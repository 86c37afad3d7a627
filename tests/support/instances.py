"""A Dagster instance of a test's own (DAGSTER_HOME in its temporary folder), for tests of the
gateway's storage reader against real run records."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest


@contextmanager
def home_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    """`DagsterInstance.get()` on a fresh DAGSTER_HOME under ``tmp_path`` (telemetry off): the home
    the gateway's storage reader opens too."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.get() as found:
        yield found
