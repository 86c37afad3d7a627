"""The wait before a webhook's next attempt: exponential with a cap, and full jitter.

"Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter") draws each wait uniformly
from [0, min(cap, base * 2**(n-1))]: receivers that come back after an outage are not hit by every
gateway's retries in the same second, and the expected wait is half the exponential one.
"""

from __future__ import annotations

import random


def backoff_window(attempt: int, base: float, cap: float) -> float:
    """The longest wait after failed attempt number `attempt` (1-based)."""
    return min(cap, base * 2 ** min(attempt - 1, 60))  # 2**60 s is past any cap: no float overflow


def next_wait(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """The wait after failed attempt `attempt`: uniform in [0, window]."""
    return rng.uniform(0.0, backoff_window(attempt, base, cap))


def delay_after_outage(outage: float, base: float, cap: float, rng: random.Random) -> tuple[float, int]:
    """Seconds from a receiver's return to its webhook's delivery, when it was down for `outage`
    seconds from the first attempt on, and the attempts made; POSTs are taken as instant.

    The figure in docs/api.md ("Webhooks") comes from this, and the outbox test checks that the
    dispatcher follows the same schedule."""
    now, attempt = 0.0, 1
    while now < outage:
        now += next_wait(attempt, base, cap, rng)
        attempt += 1
    return now - outage, attempt
