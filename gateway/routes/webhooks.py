"""GET /webhooks/secret: the secret that signs the caller's webhooks (Standard Webhooks format)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, Field

from gateway.deps import SettingsDep
from gateway.schemas import AUTHENTICATED, error_responses
from gateway.security import CallerDep
from gateway.webhooks import caller_secret

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


class WebhookSecret(BaseModel):
    secret: str = Field(description="whsec_<base64>: verify the webhooks of this API key's workflows with it.")


@router.get("/secret", response_model=WebhookSecret, responses=error_responses(*AUTHENTICATED, 404))
def webhook_secret(settings: SettingsDep, caller: CallerDep, response: Response) -> WebhookSecret:
    """Each API key's webhooks are signed with a secret of its own, derived from the server's
    WEBHOOK_SECRET and the caller: the same on every call, and another key gets another."""
    if not settings.webhook_secret:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail="webhooks are off on this gateway (no WEBHOOK_SECRET set)"
        )
    response.headers["Cache-Control"] = "no-store"
    return WebhookSecret(secret=caller_secret(settings.webhook_secret, caller))
