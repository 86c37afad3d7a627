"""The gateway app in-process (TestClient) with Dagster pointed at a closed port.

Input checks run before the gateway talks to Dagster, so these tests need no Dagster; a
request that passes them would get 503, which the tests treat as "got past validation".
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from gateway.main import create_app
from gateway.settings import GatewaySettings
from tests.support.e2e_stack import free_port


@contextmanager
def gateway_client(tmp_path: Path, client_address: str = "testclient", **overrides: Any) -> Iterator[TestClient]:
    if overrides.get("gateway_api_keys"):
        overrides.setdefault("gateway_secret", "test-secret-of-the-gateway")
    else:
        overrides.setdefault("allow_anonymous", True)
    settings = GatewaySettings(local_blob_root=str(tmp_path / "blobs"), dagster_port=free_port(), **overrides)
    with TestClient(create_app(settings), client=(client_address, 50000)) as client:
        yield client


def png_base64(size: tuple[int, int] = (40, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 150, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def start_body(**changes: Any) -> dict[str, Any]:
    return {"originalImageBase64": png_base64(), "maskPoints": [{"x": 0.5, "y": 0.5, "label": 1}], **changes}
