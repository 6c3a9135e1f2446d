"""Reconnect delays: exponential backoff with full jitter."""

from __future__ import annotations

import random


def full_jitter(attempt: int, min_delay: float, max_delay: float) -> float:
    """A delay drawn uniformly from [0, min(max_delay, min_delay * 2**attempt)]: spreads the
    reconnects of many clients that lost the same gateway over the whole window rather than
    bunching them at its end (AWS Architecture Blog, "Exponential Backoff And Jitter")."""
    ceiling = min(max_delay, min_delay * (2 ** min(attempt, 32)))
    return random.uniform(0.0, ceiling)
