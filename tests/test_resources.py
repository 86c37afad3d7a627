"""Which implementation each resource gets, from the settings alone."""

from __future__ import annotations

import pytest

from jewel_dagster.resources import build_resources
from jewel_dagster.settings import PipelineSettings


def _kinds(settings: PipelineSettings) -> dict[str, str]:
    return {k: type(v).__name__ for k, v in build_resources(settings).items()}


def test_embedded_default_is_all_local() -> None:
    kinds = _kinds(PipelineSettings())
    assert kinds["segmenter"] == "LocalSegmenter" and kinds["flux_generator"] == "LocalStudioGenerator"
    assert kinds["gemini_generator"] == "LocalStudioGenerator"


def test_empty_environment_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SAM3_URL", "A100_SERVER_URL", "GEMINI_API_KEY"):
        monkeypatch.setenv(name, "")
    assert _kinds(PipelineSettings())["segmenter"] == "LocalSegmenter"
    assert PipelineSettings().gemini_api_key is None


def test_urls_select_http_clients_and_production_never_fakes_gemini() -> None:
    kinds = _kinds(PipelineSettings(sam3_url="http://127.0.0.1:1/sam3", a100_server_url="http://127.0.0.1:1/a100"))
    assert kinds["segmenter"] == "HttpSegmenter"
    assert kinds["mask_refiner"] == "HttpMaskRefiner" and kinds["flux_generator"] == "HttpFluxGenerator"
    assert kinds["image_manipulator"] == "LocalImageManipulator"
    assert kinds["gemini_generator"] == "DisabledGenerator"
    assert _kinds(PipelineSettings(gemini_api_key="k"))["gemini_generator"] == "GeminiGenerator"
