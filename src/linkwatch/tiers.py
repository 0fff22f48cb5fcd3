"""[tiers]: lifecycle tiers (新用户 new, 普通 normal, 种子 seed, 价值 value, 核心 core) and
rolling LTV per user, at the final level of the entity stage (`user:<id>`).

A user's tier is the highest that applies, in this order:
- core: >= 2 purchases within `repeat_within`, or >= 1 purchase credited to one of their own
  shares (hop 1) within `repeat_within` (reason "repeat_purchases" / "share_driven_sales");
- value: >= 1 purchase within `ltv_window` ("purchase");
- seed: >= `seed_min_clicks` clicks on their own shares (hop 1) within `ltv_window`
  ("share_clicks");
- new: less than `new_for` since first seen ("first_seen");
- normal: none of the above ("default").
Windows count whole UTC days: a fact counts on the day it happened and the N-1 days after (N =
the window in days), so a tier that rests on it lapses at midnight UTC N days later. The user is
first seen at their first signal of any kind (a credit or purchase may precede "seen" when clocks
are skewed). Each change is a `ProfileUpdate` on the profiles topic, the first one included
(previous_tier null).

A user is forgotten once `profile_ttl` has passed since their last signal and nothing they did
still counts in a window (so LTV stays exact); by then their tier is normal. A user who comes
back after that starts over as new.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from linkwatch.durations import parse_duration
from linkwatch.events import format_ts
from linkwatch.signals import EntityOutput, EntityStep, Measure, MetricSpec, Published, Signal
from linkwatch.triggers import derive_id

DAY_MS: Final = 86_400_000
_DATE_TIME: Final[dict[str, Any]] = {"format": "date-time"}


class Tier(StrEnum):
    NEW = "new"
    NORMAL = "normal"
    SEED = "seed"
    VALUE = "value"
    CORE = "core"


Reason = Literal[
    "repeat_purchases",
    "share_driven_sales",
    "purchase",
    "share_clicks",
    "first_seen",
    "default",
    "credits",  # the tier is unchanged; the user's shares earned credit (sharer figures)
]

METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec(
        "tier_changes_total",
        'Lifecycle tier changes, by previous tier ("none" for a first tier) and new tier',
        ("from", "to"),
        "counter",
    ),
    MetricSpec("tier_users", "Users currently in each lifecycle tier", ("tier",), "gauge"),
    MetricSpec(
        "fission_sharers_total",
        "Users who shared for the first time (K-factor: fission_new_users_total{hop=1} / this)",
        (),
        "counter",
    ),
)


@dataclass(frozen=True, slots=True)
class TierRules:
    enabled: bool = True
    new_for_ms: int = 7 * DAY_MS
    repeat_within_days: int = 90
    ltv_window_days: int = 365
    seed_min_clicks: int = 1
    profile_ttl_ms: int = 180 * DAY_MS


class TierSpec(BaseModel):
    """`[tiers]` in the journeys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    new_for: str = Field(default="7d", description="A user is new this long after first seen")
    repeat_within: str = Field(
        default="90d", description="Window (whole days) for repeat and share-driven purchases"
    )
    ltv_window: str = Field(default="365d", description="Window (whole days) of the rolling LTV")
    seed_min_clicks: int = Field(
        default=1, ge=1, le=1000, description="Clicks on a user's shares that make them seed"
    )
    profile_ttl: str = Field(default="180d", description="Forget a user this long after")

    @field_validator("new_for", "profile_ttl")
    @classmethod
    def _duration(cls, value: str) -> str:
        _parse(value)
        return value

    @field_validator("repeat_within", "ltv_window")
    @classmethod
    def _days(cls, value: str) -> str:
        if _parse(value) % DAY_MS:
            raise ValueError(f"{value!r} must be whole days (windows count UTC days), e.g. 90d")
        return value

    def rules(self) -> TierRules:
        return TierRules(
            enabled=self.enabled,
            new_for_ms=_parse(self.new_for),
            repeat_within_days=_parse(self.repeat_within) // DAY_MS,
            ltv_window_days=_parse(self.ltv_window) // DAY_MS,
            seed_min_clicks=self.seed_min_clicks,
            profile_ttl_ms=_parse(self.profile_ttl),
        )


def _parse(duration: str) -> int:
    return parse_duration(duration)


# -- the record -----------------------------------------------------------------------------


class Credits(BaseModel):
    """What shares earned a user at one hop of referral chains."""

    model_config = ConfigDict(frozen=True)

    hop: int = Field(description="1: the user's own shares; 2: shares by users those brought; …")
    clicks: int = Field(description="Clicks through those shares")
    new_users: int = Field(description="New users those shares brought")
    purchases: int = Field(description="Purchases through those shares")
    revenue: dict[str, str] = Field(description="Their revenue per currency (decimal strings)")


class ProfileUpdate(BaseModel):
    """A user's lifecycle tier changed (or was first assigned), or, with reason "credits" and the
    tier unchanged, their shares earned credit: the sharer (KOC) figures moved. Key: user_id."""

    model_config = ConfigDict(frozen=True)

    update_id: str = Field(description="Deterministic: derived from user, tier and event time")
    type: Literal["profile_update"] = Field(default="profile_update", description="Record type")
    user_id: str = Field(description="The user")
    tier: Tier = Field(description="The tier from event_time on")
    previous_tier: Tier | None = Field(description="The tier before; null for a first tier")
    reason: Reason = Field(
        description='The rule that gives the new tier, or "credits" for a sharer-figures update'
    )
    event_time: str = Field(
        description="Event time of the change (RFC 3339, UTC)", json_schema_extra=_DATE_TIME
    )
    first_seen: str = Field(
        description="Event time the user was first seen (RFC 3339, UTC)",
        json_schema_extra=_DATE_TIME,
    )
    ltv: dict[str, str] = Field(description="Spend within ltv_window per currency (decimals)")
    purchases: int = Field(description="Purchases within ltv_window")
    shares: int = Field(description="Shares made since first seen")
    credits: list[Credits] = Field(description="Credits earned by shares since first seen, by hop")


# -- state ----------------------------------------------------------------------------------

Amounts = tuple[tuple[str, str], ...]  # (currency, decimal string), sorted by currency


class Day(NamedTuple):
    """What one UTC day adds to the windows."""

    day: int  # epoch day number: ts // DAY_MS
    purchases: int = 0
    spend: Amounts = ()
    share_clicks: int = 0  # hop-1 click credits
    share_purchases: int = 0  # hop-1 purchase credits


class HopCredits(NamedTuple):
    hop: int
    clicks: int = 0
    new_users: int = 0
    purchases: int = 0
    revenue: Amounts = ()


class UserProfile(NamedTuple):
    first_seen: int
    last_active: int  # event time of the latest signal
    now: int  # the event time last handled
    tier: Tier | None  # None only before the first signal is settled
    days: tuple[Day, ...]  # ascending, only days still inside a window
    shares: int
    credits: tuple[HopCredits, ...]  # ascending by hop


class Tiers:
    """Entity logic for `user:` entities at the final level."""

    prefixes: tuple[str, ...] = ("user",)

    def __init__(self, rules: TierRules, level: int | None = None) -> None:
        self.rules = rules
        self.level = level  # where `user:` entities live (fission.final_level), if checked
        self.kept_days = max(rules.repeat_within_days, rules.ltv_window_days)

    def apply(self, entity: str, state: Any | None, signal: Signal) -> EntityStep:
        if self.level is not None and signal.level != self.level:
            raise ValueError(f"{signal.kind} signal at level {signal.level}, not {self.level}")
        if signal.kind not in ("seen", "purchase", "share", "credit"):
            return EntityStep(state, [])
        ts = signal.ts
        if state is None:
            profile = UserProfile(ts, ts, ts, None, (), 0, ())
        else:  # last_active and now move to ts (wakes drop days that lapsed)
            first_seen, _, _, tier, days, shares, credits = state
            profile = UserProfile(first_seen, ts, ts, tier, days, shares, credits)
        outputs: list[EntityOutput] = []
        data = signal.data
        if signal.kind == "purchase":
            profile = _add_day(profile, ts, purchases=1, spend=(data["currency"], data["amount"]))
        elif signal.kind == "share":
            if profile.shares == 0:
                outputs.append(Measure("fission_sharers_total", (), 1))
            profile = profile._replace(shares=profile.shares + 1)
        elif signal.kind == "credit":
            profile = _add_credit(profile, ts, data)
            settled, outputs = self._settle(entity, profile, ts, outputs)
            if settled.tier == profile.tier:  # no tier change said it: the figures moved
                update = self._update(entity, settled, ts, settled.tier, "credits", signal)
                outputs = [*outputs, Published("profiles", update.user_id, update)]
            return EntityStep(settled, outputs)
        return EntityStep(*self._settle(entity, profile, ts, outputs))

    def wake(self, entity: str, state: Any, at: int) -> EntityStep:
        profile: UserProfile = state
        forget = at >= self._forget_at(profile)
        first_seen, last_active, _, tier, days, shares, credits = profile
        if days:  # `_prune`, then now = at
            days = tuple(self._within(profile, at, self.kept_days))
        pruned = UserProfile(first_seen, last_active, at, tier, days, shares, credits)
        profile, outputs = self._settle(entity, pruned, at, [])
        if not forget:
            return EntityStep(profile, outputs)
        return EntityStep(None, [*outputs, Measure("tier_users", (str(profile.tier),), -1)])

    def next_wake(self, state: Any) -> int:
        """The earliest lapse after `now` (the end of "new", a day leaving a window), else
        when the user is forgotten. Asked after every signal and wake: one pass, no lists."""
        profile: UserProfile = state
        rules = self.rules
        now = profile.now
        lapse = profile.first_seen + rules.new_for_ms
        best = lapse if lapse > now else None
        repeat, ltv = rules.repeat_within_days, rules.ltv_window_days
        for day in profile.days:
            for lapse in ((day.day + repeat) * DAY_MS, (day.day + ltv) * DAY_MS):
                if lapse > now and (best is None or lapse < best):
                    best = lapse
        return best if best is not None else self._forget_at(profile)

    def dump(self, state: Any) -> Any:
        profile: UserProfile = state
        return [
            profile.first_seen,
            profile.last_active,
            profile.now,
            profile.tier,
            [
                [d.day, d.purchases, dict(d.spend), d.share_clicks, d.share_purchases]
                for d in profile.days
            ],
            profile.shares,
            [[c.hop, c.clicks, c.new_users, c.purchases, dict(c.revenue)] for c in profile.credits],
        ]

    def load(self, data: Any) -> Any:
        first_seen, last_active, now, tier, days, shares, credits = data
        return UserProfile(
            first_seen,
            last_active,
            now,
            Tier(tier) if tier is not None else None,
            tuple(
                Day(d, n, _amounts(spend), clicks, bought) for d, n, spend, clicks, bought in days
            ),
            shares,
            tuple(
                HopCredits(hop, clicks, new_users, bought, _amounts(revenue))
                for hop, clicks, new_users, bought, revenue in credits
            ),
        )

    # -- rules --------------------------------------------------------------------------------

    def tier_at(self, profile: UserProfile, at: int) -> tuple[Tier, Reason]:
        """The tier that applies at event time `at` (the first rule that holds, top down)."""
        rules = self.rules
        if profile.days:  # most users have no day in any window: nothing to add up
            today = at // DAY_MS
            repeat_from = today - rules.repeat_within_days
            ltv_from = today - rules.ltv_window_days
            repeat_purchases = ltv_clicks = 0
            share_purchases = ltv_purchases = False
            for day in profile.days:
                if day.day > repeat_from:
                    repeat_purchases += day.purchases
                    share_purchases = share_purchases or bool(day.share_purchases)
                if day.day > ltv_from:
                    ltv_purchases = ltv_purchases or bool(day.purchases)
                    ltv_clicks += day.share_clicks
            if repeat_purchases >= 2:
                return Tier.CORE, "repeat_purchases"
            if share_purchases:
                return Tier.CORE, "share_driven_sales"
            if ltv_purchases:
                return Tier.VALUE, "purchase"
            if ltv_clicks >= rules.seed_min_clicks:
                return Tier.SEED, "share_clicks"
        elif rules.seed_min_clicks <= 0:
            return Tier.SEED, "share_clicks"  # 0 clicks reach it (as the sum of none did)
        if at < profile.first_seen + rules.new_for_ms:
            return Tier.NEW, "first_seen"
        return Tier.NORMAL, "default"

    @staticmethod
    def _within(profile: UserProfile, at: int, days: int) -> list[Day]:
        today = at // DAY_MS
        return [day for day in profile.days if day.day > today - days]

    def _forget_at(self, profile: UserProfile) -> int:
        rules = self.rules
        last_days = profile.days
        return max(
            profile.last_active + rules.profile_ttl_ms,
            profile.first_seen + rules.new_for_ms,
            (max(day.day for day in last_days) + self.kept_days) * DAY_MS if last_days else 0,
        )

    def _settle(
        self, entity: str, profile: UserProfile, at: int, outputs: list[EntityOutput]
    ) -> tuple[UserProfile, list[EntityOutput]]:
        """Publish a change of tier at `at`, if there is one."""
        tier, reason = self.tier_at(profile, at)
        if tier == profile.tier:
            return profile, outputs
        first_seen, last_active, now, previous, days, shares, credits = profile
        profile = UserProfile(first_seen, last_active, now, tier, days, shares, credits)
        update = self._update(entity, profile, at, previous, reason, None)
        outputs = [
            *outputs,
            Published("profiles", update.user_id, update),
            Measure("tier_changes_total", (str(previous or "none"), str(tier)), 1),
            Measure("tier_users", (str(tier),), 1),
        ]
        if previous is not None:
            outputs.append(Measure("tier_users", (str(previous),), -1))
        return profile, outputs

    def _update(
        self,
        entity: str,
        profile: UserProfile,
        at: int,
        previous: Tier | None,
        reason: Reason,
        credit: Signal | None,
    ) -> ProfileUpdate:
        """The record of the profile as it is at `at`."""
        user_id = entity.partition(":")[2]
        tier = profile.tier
        assert tier is not None  # settled: every profile has a tier
        in_ltv = self._within(profile, at, self.rules.ltv_window_days) if profile.days else ()
        cause = (tier, str(at)) if credit is None else ("credits", credit.signal_id)
        event_time = format_ts(at)
        return ProfileUpdate(
            update_id=derive_id("profile_update", user_id, *cause),
            user_id=user_id,
            tier=tier,
            previous_tier=previous,
            reason=reason,
            event_time=event_time,
            first_seen=event_time if profile.first_seen == at else format_ts(profile.first_seen),
            ltv=dict(_sum_amounts(day.spend for day in in_ltv)) if in_ltv else {},
            purchases=sum(day.purchases for day in in_ltv),
            shares=profile.shares,
            # Dicts, validated into Credits by ProfileUpdate itself (one validator call).
            credits=[
                {
                    "hop": hop.hop,
                    "clicks": hop.clicks,
                    "new_users": hop.new_users,
                    "purchases": hop.purchases,
                    "revenue": dict(hop.revenue),
                }
                for hop in profile.credits
            ],
        )


# -- helpers --------------------------------------------------------------------------------


def _add_day(
    profile: UserProfile,
    ts: int,
    *,
    purchases: int = 0,
    spend: tuple[str, str] | None = None,
    share_clicks: int = 0,
    share_purchases: int = 0,
) -> UserProfile:
    today = ts // DAY_MS
    days = profile.days
    # Signals come in time order: today is the last day kept, or not there yet.
    day = days[-1] if days and days[-1].day == today else Day(today)
    kept = days[:-1] if days and days[-1].day == today else days
    day = day._replace(
        purchases=day.purchases + purchases,
        spend=_sum_amounts([day.spend, (spend,)]) if spend else day.spend,
        share_clicks=day.share_clicks + share_clicks,
        share_purchases=day.share_purchases + share_purchases,
    )
    return profile._replace(days=(*kept, day))


def _add_credit(profile: UserProfile, ts: int, data: Mapping[str, Any]) -> UserProfile:
    hop, what = int(data["hop"]), data["what"]
    by_hop = {c.hop: c for c in profile.credits}
    credit = by_hop.get(hop, HopCredits(hop))
    if what == "click":
        credit = credit._replace(clicks=credit.clicks + 1)
    elif what == "new_user":
        credit = credit._replace(new_users=credit.new_users + 1)
    elif what == "purchase":
        revenue = _sum_amounts([credit.revenue, ((data["currency"], data["amount"]),)])
        credit = credit._replace(purchases=credit.purchases + 1, revenue=revenue)
    by_hop[hop] = credit
    profile = profile._replace(credits=tuple(by_hop[h] for h in sorted(by_hop)))
    if hop == 1 and what in ("click", "purchase"):  # the user's own shares: tier rules
        return _add_day(
            profile,
            ts,
            share_clicks=int(what == "click"),
            share_purchases=int(what == "purchase"),
        )
    return profile


def _sum_amounts(groups: Iterable[Amounts]) -> Amounts:
    totals: dict[str, Decimal] = {}
    for group in groups:
        for currency, amount in group:
            totals[currency] = totals.get(currency, Decimal(0)) + Decimal(amount)
    return tuple((currency, str(totals[currency])) for currency in sorted(totals))


def _amounts(data: Mapping[str, str]) -> Amounts:
    return tuple(sorted(data.items()))
