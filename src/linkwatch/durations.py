"""Durations in configuration: '90s', '30m', '1h30m', '2d'."""

from __future__ import annotations

import re
from typing import Final

_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_MS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration(text: str) -> int:
    """'90s', '30m', '1h30m', '2d' → milliseconds. Strictly positive."""
    cleaned = text.strip()
    pos = 0
    total = 0
    for match in _DURATION_PART.finditer(cleaned):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNIT_MS[match.group(2)]
        pos = match.end()
    if pos != len(cleaned) or not cleaned:
        raise ValueError(f"invalid duration {text!r} (use e.g. 30s, 5m, 1h30m, 2d)")
    if total <= 0:
        raise ValueError(f"duration {text!r} must be greater than zero")
    return total
