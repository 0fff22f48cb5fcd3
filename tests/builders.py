"""Builders for valid input records, overridable per test."""

from __future__ import annotations

from typing import Any

import orjson

T0 = 1_732_233_600_000  # 2024-11-22T00:00:00Z
MIN = 60_000


def record(kind: str = "click", **fields: Any) -> dict[str, Any]:
    """A valid record of `kind`; keyword arguments override or add fields (None removes)."""
    base: dict[str, Any] = {
        "kind": kind,
        "event_id": "e1",
        "user_id": "u1",
        "ts": T0,
        "channel": "web",
    }
    base.update(
        {
            "click": {"link_id": "l1", "url": "https://shop.example/p/1", "page": "product"},
            "share": {"share_id": "s1", "target": "group_chat", "content_id": "c1"},
            "purchase": {"order_id": "o1", "amount": "129.00", "currency": "CNY"},
            "group_chat": {"group_id": "g1", "action": "message"},
        }.get(kind, {})
    )
    for key, value in fields.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def raw(kind: str = "click", **fields: Any) -> bytes:
    return orjson.dumps(record(kind, **fields))


def at(minutes: float, seconds: float = 0) -> int:
    """Event time T0 + the given offset, in epoch ms."""
    return T0 + int(minutes * MIN + seconds * 1000)
