"""The gateway's settings: the pipeline's (shared blob store) plus where Dagster listens."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from jewel_dagster.settings import PipelineSettings


class GatewaySettings(PipelineSettings):
    dagster_host: str = Field(default="127.0.0.1", description="Host of dagster-webserver (GraphQL).")
    dagster_port: int = Field(default=3000, description="Port of dagster-webserver.")
    dagster_location_name: str = "jewel_dagster"
    dagster_repository_name: str = "__repository__"
    dagster_timeout_seconds: float = Field(default=10.0, description="Timeout of each GraphQL call.")
    api_port: int = Field(default=8001, description="Port the gateway listens on (the seed's API_PORT).")
    max_image_bytes: int = Field(default=25 * 1024 * 1024, description="Largest decoded upload accepted.")
    max_image_pixels: int = Field(default=50_000_000, description="Largest image (width x height) accepted.")


@lru_cache(maxsize=1)
def get_settings() -> GatewaySettings:
    return GatewaySettings()
