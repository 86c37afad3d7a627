"""Shared by the benchmark scripts: percentiles and a request body."""

from __future__ import annotations

import base64
import statistics
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE = base64.b64encode((REPO_ROOT / "samples" / "ring.jpg").read_bytes()).decode()
BODY = {"originalImageBase64": SAMPLE, "maskPoints": [{"x": 0.245, "y": 0.467, "label": 1}]}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(label: str, seconds: list[float]) -> str:
    if not seconds:
        return f"{label}: no samples"
    return (
        f"{label}: n={len(seconds)} median={statistics.median(seconds) * 1000:.1f} ms "
        f"p95={percentile(seconds, 95) * 1000:.1f} ms p99={percentile(seconds, 99) * 1000:.1f} ms"
    )
