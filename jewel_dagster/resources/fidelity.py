"""Fidelity thresholds and their evaluation: when is a generation good enough to show."""

from __future__ import annotations

import dagster as dg
from pydantic import Field


class FidelityThresholds(dg.ConfigurableResource):
    """Limits a Flux generation's metrics must meet; the `fidelity` asset check applies them."""

    min_iou: float = Field(default=0.90, ge=0.0, le=1.0)
    min_precision: float = Field(default=0.90, ge=0.0, le=1.0)
    min_recall: float = Field(default=0.90, ge=0.0, le=1.0)
    min_growth_ratio: float = Field(default=0.90, ge=0.0)
    max_growth_ratio: float = Field(default=1.10, ge=0.0)

    def violations(self, metrics: dict[str, float]) -> list[str]:
        """Each threshold the metrics miss, as a sentence; empty when the generation passes."""
        found = []
        for name, minimum in (("iou", self.min_iou), ("precision", self.min_precision), ("recall", self.min_recall)):
            if metrics[name] < minimum:
                found.append(f"{name} {metrics[name]:.3f} < {minimum}")
        growth = metrics["growth_ratio"]
        if not self.min_growth_ratio <= growth <= self.max_growth_ratio:
            found.append(f"growth_ratio {growth:.3f} outside {self.min_growth_ratio}..{self.max_growth_ratio}")
        return found
