"""The nearest-rank percentile the bench scripts report (no interpolation: a value that was
measured)."""

from __future__ import annotations

import math


def nearest_rank(ordered: list[float], q: float) -> float:
    """The `q` quantile (0 < q <= 1) of `ordered`, a sorted non-empty list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
