"""Which implementation each resource gets, from the settings alone."""

from __future__ import annotations

import pytest

from devtools.stack import REPO_ROOT
from gateway.settings import GatewaySettings
from jewel_dagster.resources.selection import build_resources
from jewel_dagster.settings import PipelineSettings


def _kinds(settings: PipelineSettings) -> dict[str, str]:
    return {k: type(v).__name__ for k, v in build_resources(settings).items()}


def test_embedded_default_is_all_local() -> None:
    kinds = _kinds(PipelineSettings())
    assert kinds["segmenter"] == "LocalSegmenter" and kinds["flux_generator"] == "LocalStudioGenerator"
    assert kinds["gemini_generator"] == "LocalStudioGenerator"


def test_every_variable_of_env_example_can_be_left_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """`.env.example` lists every variable; copied as it is, it must give the embedded default."""
    example = REPO_ROOT / ".env.example"
    for line in example.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            monkeypatch.setenv(name, value)
    settings = PipelineSettings()
    assert not settings.uses_azure and settings.gemini_api_key is None and settings.local_flux_grow_seeds is None
    kinds = _kinds(settings)
    assert kinds["blob_store"] == "LocalBlobStore" and kinds["segmenter"] == "LocalSegmenter"
    gateway = GatewaySettings()  # the gateway reads the same file: STATUS_SOURCE= and friends are unset
    assert gateway.status_cache_seconds is None and gateway.status_source == "graphql"


def test_urls_select_http_clients_and_production_never_fakes_gemini() -> None:
    kinds = _kinds(PipelineSettings(sam3_url="http://127.0.0.1:1/sam3", a100_server_url="http://127.0.0.1:1/a100"))
    assert kinds["segmenter"] == "HttpSegmenter"
    assert kinds["mask_refiner"] == "HttpMaskRefiner" and kinds["flux_generator"] == "HttpFluxGenerator"
    assert kinds["image_manipulator"] == "LocalImageManipulator"
    assert kinds["gemini_generator"] == "DisabledGenerator"
    assert _kinds(PipelineSettings(gemini_api_key="k"))["gemini_generator"] == "GeminiGenerator"
