"""Request and response bodies of the seed's REST API (camelCase, as the frontend sends)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from jewel_dagster.defs.config import BrushStroke, MaskPoint

WorkflowStatus = Literal["RUNNING", "COMPLETED", "FAILED", "CANCELLED"]
ServiceState = Literal["online", "offline", "local", "unknown"]


class _StrokesAndWebhook(BaseModel):
    """What every workflow request may add: brush strokes, and where to POST the final state."""

    brushStrokes: list[BrushStroke] = Field(default_factory=list, max_length=200)
    webhookUrl: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="http(s) URL that gets the final state POSTed once the workflow ends, signed as Standard "
        "Webhooks say (webhook-id, webhook-timestamp, webhook-signature) with the secret of GET /webhooks/secret.",
    )


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

    imageUri: str = Field(min_length=1, max_length=1024)
    maskUri: str = Field(min_length=1, max_length=1024)


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


class HealthResponse(BaseModel):
    status: Literal["healthy", "degraded"]
    dagster: Literal["connected", "disconnected"]
    temporal: Literal["connected", "disconnected"] = Field(description="Alias of `dagster` for the old frontend.")
    services: dict[str, ServiceState]
