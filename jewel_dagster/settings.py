"""The pipeline's settings, read from the environment in this one place."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PipelineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    local_blob_root: str = Field(
        default=".data/blobs", description="Folder of the local blob store (embedded default)."
    )
    azure_container_name: str = "jewelry-uploads"
    zoom_threshold: float = Field(default=0.25, description="Frame clutter above which the background is removed.")
    local_flux_grow_px: int = Field(
        default=0,
        description="Make the local Flux stand-in bleed the jewelry by N pixels (demonstrates failing checks).",
    )
    local_gemini_enabled: bool = Field(
        default=True, description="Run the local Gemini stand-in; off gives null results."
    )


@lru_cache(maxsize=1)
def get_settings() -> PipelineSettings:
    return PipelineSettings()
