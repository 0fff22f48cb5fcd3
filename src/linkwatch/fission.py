"""[fission]: share attribution (裂变 / KOC) along referral chains.

A click, new user or purchase that came through a share (`ref_share_id`) is credited to the
share's sharer (hop 1), then to whoever shared the share that brought that sharer (hop 2), and
so on up to `max_hops`. Credits go to `user:<sharer>` at the final level (see `tiers`).

One level per hop keeps the live pipeline a DAG (a level only signals higher levels):
- level 2, `share:S`: learns S's sharer and parent from its "share" signal, credits hop 1,
  sends "meta" (sharer, parent) to `share:S` at levels 3 .. final-1 and the credit as hop 2 to
  `share:<parent>` at level 3;
- level k (3 .. final-1), `share:S`: knows S from its "meta", credits hop k-1 and passes hop k
  to `share:<parent>` at level k+1 while k+1 < final.

Rules, applied at each hop separately:
- A share earns credit until `attribution_window` has passed since it was made and since its
  last credit at that hop; then it is forgotten and later facts are unattributed ("no_share").
- A fact that arrives before its share (clock skew between devices) is held, at most
  `MAX_HELD`, and credited when the share arrives, at the share's time. Facts still held
  `attribution_window` after the first of them, or beyond `MAX_HELD`, are unattributed
  ("no_share").
- Nobody earns credit for their own action (clicking or buying through their own share or a
  share down their own chain): unattributed ("self"), and the credit goes no further up.
Every id derives from the level-2 fact's signal id and the hop, so replays give the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from linkwatch.durations import parse_duration
from linkwatch.signals import (
    ENTITY_LEVEL,
    EntityOutput,
    EntityStep,
    Measure,
    MetricSpec,
    Signal,
    signal,
)

DAY_MS: Final = 86_400_000
# Facts held per share while its "share" signal is late (clock skew): a bound, not a budget.
MAX_HELD: Final = 32

METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec("fission_shares_total", "Shares seen, by target", ("target",), "counter"),
    MetricSpec(
        "fission_share_clicks_total", "Clicks credited to sharers, by hop", ("hop",), "counter"
    ),
    MetricSpec(
        "fission_new_users_total",
        "New users credited to sharers, by hop (K-factor: hop 1 / fission_sharers_total)",
        ("hop",),
        "counter",
    ),
    MetricSpec(
        "fission_purchases_total", "Purchases credited to sharers, by hop", ("hop",), "counter"
    ),
    MetricSpec(
        "fission_revenue_total",
        "Revenue of purchases credited to sharers, by hop and currency",
        ("hop", "currency"),
        "counter",
    ),
    MetricSpec(
        "fission_unattributed_total",
        "Facts through a share not credited at a hop, by reason (self, no_share)",
        ("hop", "what", "reason"),
        "counter",
    ),
)


@dataclass(frozen=True, slots=True)
class FissionRules:
    enabled: bool = True
    max_hops: int = 3
    attribution_window_ms: int = 30 * DAY_MS


class FissionSpec(BaseModel):
    """`[fission]` in the journeys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    max_hops: int = Field(
        default=3, ge=1, le=8, description="How far up a referral chain credit flows"
    )
    attribution_window: str = Field(
        default="30d",
        description="A share earns credit until this long after it was made or last credited",
    )

    @field_validator("attribution_window")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    def rules(self) -> FissionRules:
        return FissionRules(
            enabled=self.enabled,
            max_hops=self.max_hops,
            attribution_window_ms=parse_duration(self.attribution_window),
        )


def final_level(rules: FissionRules) -> int:
    """The level of `user:` entities: one above the last hop's share level."""
    return ENTITY_LEVEL + rules.max_hops


def k_factor(new_users: float, sharers: float) -> float | None:
    """Users brought by shares (hop 1) per user who shared; None before anyone shared."""
    return new_users / sharers if sharers else None


class Meta(NamedTuple):
    sharer: str  # user id of who made the share
    parent: str | None  # the share that brought the sharer, if one did


class Fact(NamedTuple):
    """Something to credit at this entity's hop."""

    cause: str  # signal id of the level-2 fact: every id derived from it derives from this
    what: str  # click | new_user | purchase
    actor: str  # the user who clicked, came, or bought
    amount: str | None  # purchases: decimal string
    currency: str | None


class ShareState(NamedTuple):
    level: int  # which hop this entity handles: level - 1
    meta: Meta | None  # None until the "share" / "meta" signal arrives
    held: tuple[Fact, ...]  # facts waiting for `meta`, in arrival order
    until: int  # forgotten at this event time


class ShareAttribution:
    """Entity logic for `share:` entities, levels 2 .. final-1."""

    prefixes: tuple[str, ...] = ("share",)

    def __init__(self, rules: FissionRules) -> None:
        self.rules = rules
        self.final = final_level(rules)

    def apply(self, entity: str, state: Any | None, signal: Signal) -> EntityStep:
        if signal.kind in ("share", "meta"):
            share = state or ShareState(signal.level, None, (), signal.ts)
            return self._learn(entity, share, signal)
        fact = _fact_of(signal)
        if fact is None:
            return EntityStep(state, [])
        share = state or ShareState(signal.level, None, (), signal.ts + self._window)
        if share.meta is not None:
            return EntityStep(*self._credit(entity, share, share.meta, fact, signal.ts))
        if len(share.held) >= MAX_HELD:
            return EntityStep(share, [_unattributed(share, fact, "no_share")])
        return EntityStep(share._replace(held=(*share.held, fact)), [])

    def wake(self, entity: str, state: Any, at: int) -> EntityStep:
        # The only wake is the end of the attribution window.
        share: ShareState = state
        return EntityStep(None, [_unattributed(share, fact, "no_share") for fact in share.held])

    def next_wake(self, state: Any) -> int:
        share: ShareState = state
        return share.until

    def dump(self, state: Any) -> Any:
        share: ShareState = state
        meta = list(share.meta) if share.meta else None
        return [share.level, meta, [list(fact) for fact in share.held], share.until]

    def load(self, data: Any) -> Any:
        level, meta, held, until = data
        return ShareState(
            level, Meta(*meta) if meta else None, tuple(Fact(*fact) for fact in held), until
        )

    @property
    def _window(self) -> int:
        return self.rules.attribution_window_ms

    def _learn(self, entity: str, share: ShareState, learned: Signal) -> EntityStep:
        """The share's sharer and parent are known: credit what was held, tell higher levels."""
        if share.meta is not None:  # a second "share" for the same share id: the first wins
            return EntityStep(share, [])
        meta = Meta(learned.data["sharer"], learned.data.get("parent"))
        ts = learned.ts
        outputs: list[EntityOutput] = []
        if share.level == ENTITY_LEVEL:
            outputs.append(Measure("fission_shares_total", (str(learned.data["target"]),), 1))
            data = {"sharer": meta.sharer, "parent": meta.parent}
            outputs.extend(
                signal(level, entity, "meta", ts, data, learned.signal_id, str(level))
                for level in range(ENTITY_LEVEL + 1, self.final)
            )
        held = share.held
        share = share._replace(meta=meta, held=(), until=max(share.until, ts + self._window))
        for fact in held:
            share, credited = self._credit(entity, share, meta, fact, ts)
            outputs.extend(credited)
        return EntityStep(share, outputs)

    def _credit(
        self, entity: str, share: ShareState, meta: Meta, fact: Fact, ts: int
    ) -> tuple[ShareState, list[EntityOutput]]:
        """Credit the sharer at this hop and pass the credit one hop up the chain."""
        hop = share.level - 1
        if fact.actor == meta.sharer:
            return share, [_unattributed(share, fact, "self")]
        share_id = entity.partition(":")[2]
        labels = (str(hop),)
        credit = {
            "hop": hop,
            "what": fact.what,
            "share_id": share_id,
            "amount": fact.amount,
            "currency": fact.currency,
        }
        user = f"user:{meta.sharer}"
        outputs: list[EntityOutput] = [
            signal(self.final, user, "credit", ts, credit, fact.cause, str(hop))
        ]
        if fact.what == "click":
            outputs.append(Measure("fission_share_clicks_total", labels, 1))
        elif fact.what == "new_user":
            outputs.append(Measure("fission_new_users_total", labels, 1))
        else:
            outputs.append(Measure("fission_purchases_total", labels, 1))
            amount = float(Decimal(fact.amount or "0"))
            outputs.append(Measure("fission_revenue_total", (*labels, str(fact.currency)), amount))
        parent = meta.parent
        if parent is not None and share.level + 1 < self.final:
            up = {**fact._asdict(), "hop": hop + 1}
            parent_share = f"share:{parent}"
            outputs.append(
                signal(share.level + 1, parent_share, "credit", ts, up, fact.cause, str(hop + 1))
            )
        return share._replace(until=max(share.until, ts + self._window)), outputs


def _fact_of(sig: Signal) -> Fact | None:
    data = sig.data
    if sig.kind == "credit":  # passed up from a child share: keeps the level-2 cause
        return Fact(data["cause"], data["what"], data["actor"], data["amount"], data["currency"])
    if sig.kind == "click":
        return Fact(sig.signal_id, "click", data["clicker"], None, None)
    if sig.kind == "new_user":
        return Fact(sig.signal_id, "new_user", data["user"], None, None)
    if sig.kind == "purchase":
        return Fact(sig.signal_id, "purchase", data["buyer"], data["amount"], data["currency"])
    return None


def _unattributed(share: ShareState, fact: Fact, reason: str) -> Measure:
    return Measure("fission_unattributed_total", (str(share.level - 1), fact.what, reason), 1)
