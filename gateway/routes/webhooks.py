"""The caller's webhooks: the secret that signs them (Standard Webhooks format), the list of
deliveries of a workflow, and a redelivery."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, Field

from gateway.deps import SettingsDep, StoreDep
from gateway.schemas import AUTHENTICATED, error_responses
from gateway.security import CallerDep
from gateway.settings import GatewaySettings
from gateway.webhook_outbox.outbox import Delivery
from gateway.webhook_outbox.requests import deliveries_of
from gateway.webhook_outbox.requests import redeliver as send_again
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


class DeliveryView(BaseModel):
    """One webhook delivery as its caller sees it (never the full URL: only scheme://host[:port])."""

    id: str = Field(description="The Standard Webhooks `webhook-id`, the same on every attempt and redelivery.")
    workflowId: str
    event: str = Field(description="started, progress, completed, failed or cancelled.")
    status: str = Field(description="pending, delivered, refused (a final 4xx), failed (nothing to send), gave_up.")
    attempts: int
    url: str = Field(description="The webhook URL redacted to scheme://host[:port].")
    createdAt: float = Field(description="Unix seconds it was queued.")
    nextAttemptAt: float | None = Field(description="Unix seconds of the next attempt while pending.")
    lastAttemptAt: float | None
    lastStatusCode: int | None = Field(description="The receiver's last HTTP status; null after a network error.")
    lastError: str | None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryView] = Field(description="Oldest first.")


def _view(delivery: Delivery) -> DeliveryView:
    return DeliveryView.model_validate(delivery.model_dump(exclude={"owner", "runId", "urlKey", "since"}))


def _webhooks_on(settings: GatewaySettings) -> None:
    if not settings.webhook_secret:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail="webhooks are off on this gateway (no WEBHOOK_SECRET set)"
        )


@router.get("/deliveries", response_model=DeliveryList, responses=error_responses(*AUTHENTICATED, 404))
def deliveries(
    settings: SettingsDep,
    store: StoreDep,
    caller: CallerDep,
    workflowId: Annotated[str, Query(max_length=128, description="The workflow whose deliveries to list.")],  # noqa: N803
) -> DeliveryList:
    """The caller's webhook deliveries of one workflow, with attempts, status and next attempt.
    Another caller's workflow answers 404, like one that does not exist."""
    _webhooks_on(settings)
    return DeliveryList(deliveries=[_view(d) for d in deliveries_of(store, caller, workflowId)])


_REDELIVER = "/deliveries/{delivery_id}/redeliver"


@router.post(_REDELIVER, response_model=DeliveryView, responses=error_responses(*AUTHENTICATED, 404, 409))
def redeliver(settings: SettingsDep, store: StoreDep, caller: CallerDep, delivery_id: str) -> DeliveryView:
    """Send a delivery again (same `webhook-id` and body, a new signature), as soon as an outbox
    polls, retried like the first time for WEBHOOK_GIVE_UP_SECONDS. Only its owner may; for
    anyone else it does not exist (404)."""
    _webhooks_on(settings)
    return _view(send_again(store, caller, delivery_id))
