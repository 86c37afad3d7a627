from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jewel_dagster.resources.selection import build_resources
from jewel_dagster.settings import PipelineSettings


@pytest.fixture
def local_settings(tmp_path: Path) -> PipelineSettings:
    return PipelineSettings(local_blob_root=str(tmp_path / "blobs"))


@pytest.fixture
def local_resources(local_settings: PipelineSettings) -> dict[str, Any]:
    return build_resources(local_settings)
