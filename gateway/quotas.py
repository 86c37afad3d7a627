"""Per-caller quotas: workflows a day and bytes stored, so one tenant cannot starve the others.

The run queue is Dagster's, first in, first out for everyone: a caller's runs in flight are
bounded there (`tag_concurrency_limits` on `jewel/owner`, one limit per caller, in dagster.yaml),
so a tenant's burst queues behind its own runs, not in front of everyone's. What Dagster cannot
bound is counted here, in the `limits` storage of the rate limits (memory, or Redis shared by
replicas): workflows started in a sliding 24 hours (`WORKFLOWS_PER_DAY`), and bytes of photos
uploaded in a sliding `RETENTION_DAYS`, which is what the caller keeps stored, since
retention removes a request after that long (`STORED_BYTES_PER_CALLER`). Over a quota: 429 with
the reason and `Retry-After`. Only a workflow that was started counts (an idempotent replay or a
refused request does not); concurrent starts may pass a quota by the few in flight. Without API
keys (ALLOW_ANONYMOUS, one trusted machine) there is one caller and no quota.
"""

from __future__ import annotations

import math

from fastapi import HTTPException, status
from limits import RateLimitItemPerDay

from gateway.security import ANONYMOUS, RateLimits
from gateway.settings import GatewaySettings


class Quotas:
    def __init__(self, settings: GatewaySettings, limits: RateLimits) -> None:
        self._limits = limits
        self.workflows = RateLimitItemPerDay(settings.workflows_per_day, namespace="QUOTA")
        # With RETENTION_DAYS 0 (kept for ever) bytes are counted over a year.
        days = settings.retention_days or 365
        self.stored = RateLimitItemPerDay(settings.stored_bytes_per_caller, multiples=days, namespace="QUOTA")
        self.days = days

    def refuse_over(self, caller: str, upload_bytes: int) -> None:
        """429 when one more workflow, or `upload_bytes` more stored, would pass a quota."""
        if caller == ANONYMOUS:
            return
        wait = self._limits.exhausted(self.workflows, f"workflows:{caller}")
        if wait > 0:
            raise _over(f"quota of {self.workflows.amount} workflows a day reached", wait)
        if upload_bytes > self.stored.amount:
            raise HTTPException(
                status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                detail=f"this upload alone is larger than the storage quota of {_mb(self.stored.amount)}",
            )
        wait = self._limits.exhausted(self.stored, f"stored:{caller}", cost=max(1, upload_bytes))
        if wait > 0:
            raise _over(f"storage quota of {_mb(self.stored.amount)} in {self.days} days reached", wait)

    def count(self, caller: str, upload_bytes: int) -> None:
        """A workflow started with `upload_bytes` stored."""
        if caller == ANONYMOUS:
            return
        self._limits.take(self.workflows, f"workflows:{caller}")
        if upload_bytes > 0:
            self._limits.take(self.stored, f"stored:{caller}", cost=upload_bytes)

    def used(self, caller: str) -> tuple[int, int]:
        """(workflows in the last 24 hours, bytes stored within the retention window)."""
        return (
            self._limits.used(self.workflows, f"workflows:{caller}"),
            self._limits.used(self.stored, f"stored:{caller}"),
        )


def _mb(size: int) -> str:
    return f"{size / 1024**2:,.0f} MB"


def _over(what: str, wait: float) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail=f"{what} for this API key; retry later",
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )
