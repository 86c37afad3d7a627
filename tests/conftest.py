from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

from jewel_dagster.resources.selection import build_resources
from jewel_dagster.settings import PipelineSettings


@pytest.fixture
def local_settings(tmp_path: Path) -> PipelineSettings:
    return PipelineSettings(local_blob_root=str(tmp_path / "blobs"))


@pytest.fixture
def local_resources(local_settings: PipelineSettings) -> dict[str, Any]:
    return build_resources(local_settings)


# Hypothesis: failures reproducible. Every failing example is kept in .data/hypothesis (CI keeps
# that folder between runs; locally it is the worktree's) and tried first by the next run, and a
# failure prints its `@reproduce_failure` blob (print_blob), or its seed (`--hypothesis-seed=N`)
# when the blob cannot replay it. Random per session, not derandomized: each run explores anew.
# (A seed forced for the whole session would switch the example database off.)
HYPOTHESIS_DATABASE = Path(__file__).resolve().parents[1] / ".data" / "hypothesis"
settings.register_profile("jewel", database=DirectoryBasedExampleDatabase(str(HYPOTHESIS_DATABASE)), print_blob=True)
settings.load_profile("jewel")


def pytest_report_header(config: pytest.Config) -> str:
    return f"hypothesis: failing examples kept in {HYPOTHESIS_DATABASE}"
