"""The gateway's settings: the pipeline's (shared blob store) plus where Dagster listens."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field

from jewel_dagster.settings import PipelineSettings


class GatewaySettings(PipelineSettings):
    dagster_host: str = Field(default="127.0.0.1", description="Host of dagster-webserver (GraphQL).")
    dagster_port: int = Field(default=3000, description="Port of dagster-webserver.")
    dagster_location_name: str = "jewel_dagster"
    dagster_repository_name: str = "__repository__"
    dagster_timeout_seconds: float = Field(default=30.0, description="Timeout of each GraphQL call.")
    status_cache_seconds: float | None = Field(
        default=None,
        ge=0.0,
        description="How old a workflow's status may be when GET answers (0 = always ask); "
        "unset = 0.25 s reading the run storage, 0.5 s over GraphQL.",
    )
    status_source: Literal["graphql", "storage"] = Field(
        default="graphql",
        description=(
            "Where run status is read (GET, event streams, the webhook watcher's listings), and what a finished"
            " request's answer names (blob paths, backends, check verdict, failure): Dagster's GraphQL, or its"
            " storage under DAGSTER_HOME (faster, no webserver CPU, and GET and webhooks go on while the webserver"
            " is down)."
        ),
    )
    status_stale_seconds: float = Field(
        default=5.0, ge=0.0, description="An expired status this young is answered while a refresh runs."
    )
    status_read_deadline_seconds: float = Field(
        default=3.0,
        gt=0.0,
        description="How long GET /workflow/{id} waits for Dagster's storage when memory cannot answer: past it, 503 "
        "with Retry-After (the read goes on; past 40 such reads left waiting, GET answers 503 at once). A paused "
        "or unreachable PostgreSQL otherwise held each poll until it answered (10 s in the chaos soak's pauses).",
    )
    frontend_poll_seconds: float = Field(
        default=2.0,
        gt=0.0,
        description="How often a frontend polls GET /workflow/{id} (the reference frontend: every 2 s). A status "
        "that is not final is answered from the cache only while younger than half of this, so each poll sees "
        "a state newer than the previous poll (timers jitter: half leaves the margin).",
    )
    state_body_cache_mb: float = Field(
        default=32.0,
        ge=0.0,
        description="Encoded GET /workflow/{id} answers of finished runs kept in memory (MB; 0 = none): a "
        "COMPLETED one (~0.7 MB of base64 images) is encoded once, not at every poll.",
    )
    state_body_cache_seconds: float = Field(
        default=300.0,
        ge=0.0,
        description="How long a finished run's encoded answer is kept; at most half of RESULT_URL_MINUTES, so the "
        "signed result URLs in it stay valid at least that long after they are handed out.",
    )
    max_parallel_launches: int = Field(default=4, ge=1, description="Launches in flight at once.")
    launch_wait_seconds: float = Field(default=30.0, description="How long a start waits for a launch slot.")
    cancel_wait_seconds: float = Field(
        default=6.0,
        ge=0.0,
        description="How long POST /cancel waits for the run to stop: CANCELLED once Dagster says CANCELED, 409 if "
        "it ended otherwise, 202 and RUNNING if still stopping (the warm code server kills a worker 5 s after its "
        "cancel).",
    )
    start_in_background: bool = Field(
        default=True,
        description="/workflow/start and /preprocess store the upload and a pending start, answer RUNNING at once, "
        "and the gateway's launcher adds the partition and submits the run; false: both inside the call (as before).",
    )
    start_give_up_seconds: float = Field(
        default=60.0,
        gt=0.0,
        description="A pending start whose launch found Dagster unreachable this long is FAILED, its upload deleted.",
    )
    start_takeover_seconds: float = Field(
        default=30.0,
        gt=0.0,
        description="Another gateway takes over the pending starts of a gateway whose heartbeat is this old.",
    )
    api_port: int = Field(
        default=8001, ge=1, le=65535, description="Port `python -m gateway` listens on (the seed's API_PORT)."
    )
    bind_host: str = Field(
        default="127.0.0.1", description="Address `python -m gateway` listens on (0.0.0.0 in a container)."
    )
    max_body_bytes: int = Field(
        default=25 * 1024 * 1024, description="Largest body of a route that takes a photo (refused unread)."
    )
    max_small_body_bytes: int = Field(
        default=2 * 1024 * 1024, description="Largest body of every other route (/workflow/generate: strokes only)."
    )
    max_json_objects: int = Field(
        default=25_000,
        ge=10,
        description="Most JSON objects and arrays (points, strokes) in a body, counted before parsing.",
    )
    max_json_items: int = Field(
        default=100_000,
        ge=10,
        description="Most JSON items (array values, object members) in a body, counted before parsing.",
    )
    max_json_depth: int = Field(default=16, ge=4, description="Deepest JSON nesting of a body, counted before parsing.")
    max_image_bytes: int = Field(default=25 * 1024 * 1024, description="Largest decoded upload accepted.")
    gateway_api_keys: str = Field(default="", description="Comma-separated API keys; empty = no authentication.")
    gateway_secret: str = Field(
        default="", description="Key of the HMAC that names callers in run tags; required with API keys."
    )
    allow_anonymous: bool = Field(
        default=False, description="Start without API keys (anyone who reaches the gateway may use it)."
    )
    redis_url: str | None = Field(default=None, description="Rate-limit counters in Redis (shared by replicas).")
    auth_failures_per_minute: int = Field(
        default=20, ge=1, description="Wrong API keys a minute per address (a valid key is never refused for them)."
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="Comma-separated addresses or networks of the proxies whose X-Forwarded-For names the client; "
        "empty = none (the peer's address counts); '*' = any (only when nothing else can reach the gateway).",
    )
    result_url_base: str = Field(
        default="",
        pattern=r"^(|gateway|https?://[^\s?#]+)$",
        description="Where `flux_result_url`/`gemini_result_url` point. Empty: the blob store's own signed URL "
        "(real Azure: public). An http(s) URL: the signed URL moved onto it (a proxy or CDN in front of the "
        "store; the signature covers the path, not the host). `gateway`: this gateway's artifact route "
        "(`/workflow/{id}/artifacts/...?runId=`, fetched with the caller's key), for a store clients cannot "
        "reach (Azurite inside docker-compose).",
    )
    api_docs: Literal["on", "off"] = Field(
        default="on", description="Serve /docs and /openapi.json (off in a deployment: they map the API for anyone)."
    )
    cors_origins: str = Field(default="", description="Comma-separated origins allowed to call from a browser.")
    rate_limit_per_minute: int = Field(default=600, ge=1, description="Requests a minute per caller (per key).")
    workflows_per_day: int = Field(
        default=1000, ge=1, description="Workflows one caller may start in 24 hours (a sliding window); 429 beyond."
    )
    stored_bytes_per_caller: int = Field(
        default=5 * 1024**3,
        ge=1,
        description="Bytes of photos one caller may upload within RETENTION_DAYS, after which retention "
        "removes them; 429 beyond.",
    )
    runs_in_flight_per_caller: int = Field(
        default=2,
        ge=1,
        description="Runs of one caller queued or running at once: Dagster's run queue holds the rest "
        "(tag_concurrency_limits on jewel/owner, written into dagster.yaml by devtools.stack); shown by GET /usage.",
    )
    max_image_pixels: int = Field(default=50_000_000, description="Largest image (width x height) accepted.")
    event_poll_seconds: float = Field(default=0.25, gt=0.0, description="How often an event stream looks for a change.")
    event_stream_max_seconds: float = Field(default=3600.0, gt=0.0, description="An event stream ends after this.")
    event_streams_per_caller: int = Field(
        default=10, ge=1, description="Open event streams per caller (per client address without keys); 429 beyond."
    )
    event_streams_total: int = Field(default=1000, ge=1, description="Open event streams in all; 429 beyond.")
    webhook_secret: str = Field(
        default="",
        description="Master key of webhook signatures (whsec_<base64>, or any string); each caller signs with a "
        "secret derived from it (GET /webhooks/secret); empty = no webhooks.",
    )
    webhook_allow_private: bool = Field(
        default=False, description="Allow webhooks to loopback and private addresses (tests, a trusted network)."
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0.0, description="Deadline of one webhook POST, whole (connect, send, answer), not per read."
    )
    webhook_attempts: int = Field(
        default=6,
        ge=1,
        le=20,
        description="Tries at reading a finished run's state from Dagster before its webhook is recorded as failed "
        "(POSTs are retried until WEBHOOK_GIVE_UP_SECONDS).",
    )
    webhook_give_up_seconds: float = Field(
        default=86400.0,
        gt=0.0,
        description="A webhook not accepted this long after it was queued (or redelivered) is given up (gave_up).",
    )
    webhook_backoff_max_seconds: float = Field(
        default=3600.0,
        gt=0.0,
        description="Longest wait between two POSTs of one webhook (the exponential backoff's cap, before jitter).",
    )
    webhook_progress_seconds: float = Field(
        default=0.5, ge=0.0, description="Shortest time between two `progress` webhooks of one workflow."
    )
    webhook_poll_seconds: float = Field(default=1.0, gt=0.0, description="How often finished runs are looked for.")
    webhook_recovery_hours: float = Field(
        default=24.0, ge=0.0, description="After a restart, webhooks owed by runs this recent are still sent."
    )
    webhook_backoff_seconds: float = Field(
        default=1.0,
        ge=0.0,
        description="Longest wait before the 2nd POST; doubles for each further one, up to "
        "WEBHOOK_BACKOFF_MAX_SECONDS; each wait is drawn at random below it (full jitter).",
    )
    metrics_api_key: str = Field(
        default="",
        description="Bearer token of GET /metrics; required there whenever API keys are on (else /metrics is 403).",
    )
    queue_estimate_seconds: float = Field(
        default=1.0,
        ge=0.0,
        description="How often the queue positions and ETAs of GET and the event streams are recomputed "
        "from Dagster's storage (STATUS_SOURCE=storage only; 0 = off, the fields are then absent).",
    )
    metrics_cache_seconds: float = Field(
        default=10.0, ge=0.0, description="How old the figures read from Dagster's storage may be when scraped."
    )
    health_cache_seconds: float = Field(
        default=5.0,
        ge=0.0,
        description="How long GET /health reuses its probes of the model services before it asks them again.",
    )

    def status_ttl(self) -> float:
        if self.status_cache_seconds is not None:
            return self.status_cache_seconds
        # 0.25 s on the storage: at 0.1 s the refreshes (10 a second per polled workflow) took
        # the GIL from the answers: p99 157 ms against 49 ms (benchmarks.status, paced pollers).
        return 0.25 if self.status_source == "storage" else 0.5

    def stale_status_limit(self) -> float:
        """How old a cached (running) status may be and still be answered while a refresh runs:
        older than half a poll interval, it would answer a poll with what the previous one saw."""
        return min(self.status_stale_seconds, self.frontend_poll_seconds / 2)

    def state_body_max_age(self) -> float:
        """How old a kept finished answer may be: its signed URLs were made when it was encoded."""
        return min(self.state_body_cache_seconds, self.result_url_minutes * 60 / 2)

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.gateway_api_keys.split(",") if k.strip()]

    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


@lru_cache(maxsize=1)
def get_settings() -> GatewaySettings:
    return GatewaySettings()
