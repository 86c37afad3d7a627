"""The gateway's Prometheus registry: what this process counts itself.

Two kinds of figures, chosen so several gateway replicas add up correctly:

- counted here, per process (HTTP calls, webhook deliveries): each replica counts its own, so
  dashboards `sum` over replicas;
- read from Dagster's storage (workflows, queue, GPU pool, model calls, fidelity;
  `gateway.observability.dagster_figures`): every replica reports the same global figures, so
  dashboards take `max` over replicas, never `sum`.

One registry per app (not prometheus_client's global one), so apps built again in one process
(tests) do not collide.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

# No `*_created` series beside every counter and histogram: they double the output and no
# dashboard here reads them.
disable_created_metrics()

WEBHOOK_OUTCOMES = ("delivered", "refused", "failed", "gave_up")  # gateway.webhook_outbox.outbox.ENDED
# Seconds; the API answers in milliseconds, the starts in a fraction of a second.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.http_requests = Counter(
            "jewel_http_requests",
            "HTTP calls answered by this gateway, by route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "jewel_http_request_duration_seconds",
            "Time from a call's arrival to its last body byte (event streams: the stream's life).",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "jewel_webhook_deliveries",
            "Webhook deliveries this gateway's outbox ended, by outcome: delivered, refused (a final 4xx, a URL "
            "now forbidden), failed (nothing could be sent: its URL or state unreadable), gave_up "
            "(WEBHOOK_GIVE_UP_SECONDS passed).",
            ["outcome"],
            registry=self.registry,
        )
        self.pending_starts = Gauge(
            "jewel_starts_pending",
            "Starts this gateway accepted whose run it has not launched yet (START_IN_BACKGROUND).",
            registry=self.registry,
        )
        for outcome in WEBHOOK_OUTCOMES:  # present from the start, so rate() sees the first one
            self.webhook_deliveries.labels(outcome)

    def webhook_ended(self, outcome: str) -> None:
        """Count a delivery that ended (the outbox's status: delivered, refused, failed, gave_up)."""
        self.webhook_deliveries.labels(outcome).inc()
