"""The pipeline's settings, read from the environment in this one place."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class PipelineSettings(BaseSettings):
    # `.env.example` lists every variable, many with an empty value: empty means unset, for
    # every setting of the pipeline and the gateway alike.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    local_blob_root: str = Field(
        default=".data/blobs", description="Folder of the local blob store (embedded default)."
    )
    azure_container_name: str = "jewelry-uploads"
    # Azure Blob Storage (or Azurite): a connection string, or an account name and key. Unset = local folder.
    azure_storage_connection_string: SecretStr | None = None
    azure_account_name: str | None = None
    azure_account_key: SecretStr | None = None
    azure_account_url: str | None = Field(default=None, description="Blob endpoint, for emulators or clouds.")
    result_url_minutes: int = Field(default=60, description="Lifetime of the SAS URLs handed out for results.")
    zoom_threshold: float = Field(default=0.25, description="Frame clutter above which the background is removed.")
    local_backends: Literal["classical", "instant"] = Field(
        default="classical",
        description="classical: real CPU vision; instant: trivial stand-ins for load tests and benchmarks.",
    )
    job_executor: Literal["in_process", "multiprocess"] = Field(
        default="in_process", description="multiprocess is Dagster's stock executor (a process per step)."
    )
    local_refine_busy_seconds: float = Field(
        default=0.0,
        ge=0.0,
        description="Tests only: the local mask refiner first keeps a core busy this long (a step to cancel).",
    )
    local_instant_call_seconds: float = Field(
        default=0.0,
        ge=0.0,
        le=10.0,
        description="Tests only: each call to an instant stand-in sleeps this long (steps that take time, no CPU).",
    )
    local_flux_grow_px: int = Field(
        default=0,
        description="Make the local Flux stand-in bleed the jewelry by N pixels (demonstrates failing checks).",
    )
    local_gemini_enabled: bool = Field(
        default=True, description="Run the local Gemini stand-in; off gives null results."
    )

    local_flux_grow_seeds: list[int] | None = Field(
        default=None, description="Seeds the grow setting applies to (unset: all), e.g. [0]: only first tries are bad."
    )
    # Intermediate artifacts (the IO manager): PNG row filter, and arrays kept in the run's process.
    artifact_png_filter: Literal["adaptive", "up", "sub", "none"] = Field(
        default="up", description="adaptive is libpng's default filter choice: ~2.5x slower to encode."
    )
    artifact_reuse_megabytes: int = Field(
        default=64, ge=0, description="Arrays a run's process stored, reused instead of decoded again; 0 = off."
    )
    generator_version: str = Field(default="1", description="Bump when a generator's model changes: marks stale.")

    # Logs of the gateway and the run workers: JSON lines (one object a line, for a log shipper)
    # or Dagster's and Python's plain text.
    log_format: Literal["json", "text"] = Field(default="json", description="json: one JSON object a line.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level logged by the gateway and the pipeline's JSON logger."
    )

    # Fidelity thresholds of the `fidelity` asset check.
    check_min_iou: float = 0.90
    check_min_precision: float = 0.90
    check_min_recall: float = 0.90
    check_min_growth_ratio: float = 0.90
    check_max_growth_ratio: float = 1.10

    # Re-generation: the sensor retries failed checks (at most N times) and stale generations.
    regeneration_max_attempts: int = 3
    regeneration_sensor_enabled: bool = True
    regeneration_sensor_interval_seconds: int = 30
    # How often the daemon's sensor loop looks at the sensors (Dagster's fixed 5 s; the tests that
    # wait for a sensor shorten it) and how often the run-trace sensors tick.
    sensor_loop_seconds: float = Field(default=5.0, gt=0, description="The daemon's sensor loop (Dagster: 5 s).")
    run_trace_sensor_interval_seconds: int = Field(default=5, ge=1, description="How often ended runs become spans.")
    regeneration_cron: str = "0 3 * * *"
    regeneration_schedule_enabled: bool = False

    # Retention: requests older than this are removed (runs, partition, events, blobs); 0 keeps all.
    retention_days: int = Field(default=30, ge=0, description="Days a request is kept; 0 keeps every request.")
    retention_cron: str = "30 2 * * *"
    retention_max_requests: int = Field(
        default=20_000, ge=1, description="Requests one retention run removes at most: bounds a run's length."
    )
    retention_tombstone_days: int = Field(
        default=365, ge=1, description="How long GET answers 410 for a removed request (then 404)."
    )
    regeneration_page_size: int = Field(
        default=500, ge=1, description="Partitions the regeneration sensor looks at per tick (a cursor walks on)."
    )
    regeneration_max_runs_per_tick: int = Field(default=50, ge=1, description="Runs one sensor tick may request.")

    # Model services: an unset URL means the in-process local implementation.
    image_manipulator_url: str | None = None
    birefnet_url: str | None = None
    sam3_url: str | None = None
    a100_server_url: str | None = None
    service_timeout_seconds: float = Field(default=120.0, description="Timeout of one call to a model service.")
    service_call_attempts: int = Field(
        default=3,
        ge=1,
        description="Tries of one model-service call at a transient failure (429, 5xx, timeout), within its timeout.",
    )
    service_wire: Literal["binary", "json"] = Field(
        default="binary", description="Images to the model services: binary multipart bodies, or base64 in JSON."
    )
    service_image_encoding: Literal["bmp", "png"] = Field(
        default="bmp", description="Binary wire: RGB images as BMP (fast, 16 MB a canvas) or PNG (small, slow)."
    )
    gemini_api_key: SecretStr | None = Field(default=None, description="Enables Gemini through google-genai.")
    gemini_model: str = "gemini-2.5-flash-image"
    gemini_base_url: str | None = Field(default=None, description="Override the Gemini API endpoint.")

    # Provenance of generated images (jewel_dagster/provenance): a signed C2PA manifest in each.
    c2pa: Literal["on", "off"] = Field(default="on", description="off: generated images carry no manifest.")
    c2pa_signing_cert: str | None = Field(
        default=None, description="PEM certificate chain (signing certificate first), or a path to one."
    )
    c2pa_signing_key: SecretStr | None = Field(default=None, description="PEM EC P-256 private key, or a path.")
    c2pa_test_folder: str | None = Field(
        default=None,
        description="Where the test certificate is made when none is configured; unset: `c2pa` beside the blob folder.",
    )

    @property
    def c2pa_test_path(self) -> Path:
        """The data folder's place for the test identity (never committed: under `.data`)."""
        return Path(self.c2pa_test_folder) if self.c2pa_test_folder else Path(self.local_blob_root).parent / "c2pa"

    @property
    def gemini_backend(self) -> Literal["google", "no-key", "local", "off"]:
        """Which Gemini runs, decided here once: the resources, the code versions and /health
        all follow it. A key selects Google's API; real generators elsewhere (an A100 URL)
        without a key mean none, so a local stand-in is never passed off as Gemini."""
        if self.gemini_api_key is not None:
            return "google"
        if self.a100_server_url:
            return "no-key"
        return "local" if self.local_gemini_enabled else "off"

    @property
    def uses_azure(self) -> bool:
        return bool(self.azure_storage_connection_string or (self.azure_account_name and self.azure_account_key))

    def service_urls(self) -> dict[str, str | None]:
        """The seed's service names (as /health reports them) -> configured URL or None (local)."""
        return {
            "a100": self.a100_server_url,
            "imageManipulator": self.image_manipulator_url,
            "birefnet": self.birefnet_url,
            "sam3": self.sam3_url,
        }


@lru_cache(maxsize=1)
def get_settings() -> PipelineSettings:
    return PipelineSettings()
