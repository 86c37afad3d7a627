"""Request and response bodies of the seed's REST API (camelCase, as the frontend sends)."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, field_validator, model_validator

from jewel_dagster.request_inputs import BrushStrokes, MaskPoint

WorkflowStatus = Literal["RUNNING", "COMPLETED", "FAILED", "CANCELLED"]
WebhookEvent = Literal["started", "progress", "completed", "failed", "cancelled"]
WEBHOOK_EVENTS: tuple[str, ...] = get_args(WebhookEvent)


def check_events(events: list[str]) -> list[str]:
    """`webhookEvents` as given, or ValueError with a message meant for the caller (a 422)."""
    unknown = [e for e in events if e not in WEBHOOK_EVENTS]
    if unknown:
        raise ValueError(f"unknown webhook event {unknown[0]!r}; choose among {', '.join(WEBHOOK_EVENTS)}")
    if not events:
        raise ValueError(f"name at least one event among {', '.join(WEBHOOK_EVENTS)}, or leave webhookEvents out")
    if len(set(events)) != len(events):
        raise ValueError("name each webhook event once")
    return events


ServiceState = Literal["online", "offline", "local", "unknown"]


class _StrokesAndWebhook(BaseModel):
    """What every workflow request may add: brush strokes, and where to POST the final state."""

    brushStrokes: BrushStrokes = Field(
        default_factory=list,
        description="Painted in order. Limits: 200 strokes, 10,000 points a stroke and 20,000 in all, size at most "
        "300, and a bounded painted area (sum over segments of (length + size) x size, at most 2e9 canvas pixels).",
    )
    webhookUrl: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="http(s) URL that gets the final state POSTed once the workflow ends, signed as Standard "
        "Webhooks say (webhook-id, webhook-timestamp, webhook-signature) with the secret of GET /webhooks/secret.",
    )
    webhookEvents: list[str] | None = Field(
        default=None,
        max_length=5,
        description="Which events are POSTed to webhookUrl, among started, progress (at most every 500 ms), "
        "completed, failed, cancelled; default: the final ones (completed, failed, cancelled).",
    )

    @field_validator("webhookEvents")
    @classmethod
    def known_events(cls, events: list[str] | None) -> list[str] | None:
        return None if events is None else check_events(events)

    @model_validator(mode="after")
    def events_need_a_url(self) -> _StrokesAndWebhook:
        if self.webhookEvents is not None and self.webhookUrl is None:
            raise ValueError("webhookEvents needs a webhookUrl to send them to")
        return self


class StartRequest(_StrokesAndWebhook):
    """Body of /workflow/start and /workflow/preprocess."""

    originalImageBase64: str = Field(min_length=1, description="The photo, base64 (a data: URL prefix is allowed).")
    maskPoints: list[MaskPoint] = Field(min_length=1, max_length=100)

    @field_validator("maskPoints")
    @classmethod
    def needs_a_positive_point(cls, points: list[MaskPoint]) -> list[MaskPoint]:
        if not any(p.label == 1 for p in points):
            raise ValueError("at least one mask point must have label 1 (a click on the jewelry)")
        return points


class GenerateRequest(_StrokesAndWebhook):
    """Body of /workflow/generate: a preprocessed image and mask, plus brush strokes."""

    # No min_length: an empty URI is a URI outside our storage like any other, refused with 400
    # (the README's promise for imageUri/maskUri), not a 422 schema error.
    imageUri: str = Field(max_length=1024, description="A URI in the configured store, e.g. a preprocess result.")
    maskUri: str = Field(max_length=1024, description="A URI in the configured store, e.g. a preprocess result.")


class StartResponse(BaseModel):
    workflowId: str
    status: WorkflowStatus


class WorkflowState(BaseModel):
    """GET /workflow/{id}; `result` only when COMPLETED, `error`/`failedStep` only when FAILED."""

    workflowId: str
    status: WorkflowStatus
    progress: int
    currentStep: str
    result: dict[str, Any] | None = None
    failedStep: str | None = None
    error: str | None = None
    # Not in the seed: absent when unknown (GET leaves out None fields).
    queuePosition: int | None = Field(
        default=None,
        description="While RUNNING: runs ahead of this one in the run queue, or steps ahead of its step in the "
        "GPU pool while it waits for a slot; absent while it runs.",
    )
    etaSeconds: int | None = Field(
        default=None,
        description="While RUNNING: seconds until it should end, from recent step durations and the work ahead; "
        "absent until the gateway has seen a run finish.",
    )


class HealthResponse(BaseModel):
    status: Literal["healthy", "degraded"]
    dagster: Literal["connected", "disconnected"]
    temporal: Literal["connected", "disconnected"] = Field(description="Alias of `dagster` for the old frontend.")
    services: dict[str, ServiceState]
    provenance: Literal["configured certificate", "test certificate", "off"] = Field(
        description="How generated images are signed (C2PA): a configured certificate, the test certificate "
        "made at first start (verifiable, trusted by no one), or off (C2PA=off)."
    )


class ErrorBody(BaseModel):
    """Every 4xx/5xx the gateway answers itself: `detail` names the field or says what to do."""

    detail: str


class FieldError(BaseModel):
    field: str
    message: str


class ValidationErrorBody(BaseModel):
    """422: the request does not match the schema; `detail` joins the first `errors`."""

    detail: str
    errors: list[FieldError]


_ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Bad input (the field is named in `detail`)",
    401: "No valid API key (when the gateway has keys)",
    403: "Off: /metrics while API keys are on and METRICS_API_KEY is unset",
    404: "No such workflow, or not the caller's; or nothing stored",
    409: "The workflow already ended",
    410: "The workflow was removed by retention (RETENTION_DAYS); its results are gone",
    413: "The body or the image is too large",
    415: "An image format that is not accepted",
    422: "The request does not match the schema",
    429: "Rate limit reached (see Retry-After)",
    502: "Dagster refused the request",
    503: "Dagster is unreachable or busy (see Retry-After)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for route decorators: the gateway's error bodies, so clients (and the
    fuzz test's conformance checks) know every status a route can answer."""
    return {
        code: {"model": ValidationErrorBody if code == 422 else ErrorBody, "description": _ERROR_DESCRIPTIONS[code]}
        for code in codes
    }


# What every route behind authentication can answer, whatever it does.
AUTHENTICATED = (401, 422, 429)
# What every route that reads one workflow can answer on top of that.
ONE_WORKFLOW = (*AUTHENTICATED, 404, 502, 503)
# What a start-like POST with a body can answer.
STARTS = (*AUTHENTICATED, 400, 404, 413, 415, 502, 503)
