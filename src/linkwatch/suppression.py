"""Suppression before publishing: holdout, cooldown, frequency cap, quiet hours.

Applied per user to the engine's outputs in event-time order, so replay and the live worker
decide alike. Nothing is decided by a clock: quiet hours are judged on the trigger's event
time in the user's timezone, and a held trigger is released when event time (the watermark)
reaches the end of the quiet window.

Dead ends are emitted on arrival, not in event-time order; only the holdout (a property of
the user, not of order) applies to them, so the order-dependent rules cannot make replay and
live disagree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple, cast
from zoneinfo import ZoneInfo

from linkwatch.events import parse_ts
from linkwatch.triggers import Resolution, TopicRecord, Trigger

WithheldReason = Literal["holdout", "cooldown", "frequency_cap", "resolved_while_held"]
EMPTY_COOLDOWNS: Final[Mapping[str, int]] = MappingProxyType({})
EMPTY_WITHHELD: Final[Mapping[str, tuple[str, str]]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SuppressionRules:
    frequency_cap: int = 0  # triggers per user per window; 0: no cap
    frequency_window_ms: int = 86_400_000
    cooldown_ms: int = 0  # per user and journey, after a trigger goes out; 0: none
    quiet_start_min: int | None = None  # minutes after local midnight; None: no quiet hours
    quiet_end_min: int | None = None
    default_timezone: str = "UTC"
    holdout_percent: float = 0.0

    @property
    def active(self) -> bool:
        return bool(
            self.frequency_cap
            or self.cooldown_ms
            or self.quiet_start_min is not None
            or self.holdout_percent
        )


class Held(NamedTuple):
    release_at: int  # event time (ms) the quiet window ends
    trigger: Trigger


class Delivery(NamedTuple):
    """Per-user memory of what went out (or waits to)."""

    sent: tuple[int, ...] = ()  # event times of recent triggers sent (frequency cap)
    cooldowns: Mapping[str, int] = EMPTY_COOLDOWNS  # journey → event time of the last sent
    held: tuple[Held, ...] = ()  # in quiet hours, by release time
    tz: str | None = None  # the user's timezone, from their latest event carrying one
    # journey → (trigger id, reason) of its latest drop-off kept back: its resolution is too
    withheld: Mapping[str, tuple[str, str]] = EMPTY_WITHHELD


class Withheld(NamedTuple):
    """A trigger or resolution not published, and why (counted, never sent)."""

    record: TopicRecord
    reason: WithheldReason


EMPTY_DELIVERY: Final = Delivery()


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def in_holdout(user_id: str, percent: float) -> bool:
    """Deterministic: the same users are held out in every run, replay or live."""
    if percent <= 0:
        return False
    digest = hashlib.blake2b(b"holdout:" + user_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 < percent * 100


def uplift_group(user_id: str, holdout_percent: float) -> str:
    """Which side of the uplift comparison a user is on."""
    return "holdout" if in_holdout(user_id, holdout_percent) else "treated"


class Suppression:
    def __init__(self, rules: SuppressionRules) -> None:
        self.rules = rules

    def dead_end(self, trigger: Trigger) -> Trigger | Withheld:
        if in_holdout(trigger.user_id, self.rules.holdout_percent):
            return Withheld(trigger, "holdout")
        return trigger

    def apply(self, delivery: Delivery, outputs: list[Any], at: int) -> tuple[Delivery, list[Any]]:
        """Decide every drop-off trigger and resolution in `outputs` (the engine's outputs for
        one user, in event-time order), at event time `at`; the rest passes through. A trigger
        whose quiet window has already ended by `at` goes out at once."""
        result: list[Any] = []
        for out in outputs:
            if isinstance(out, Trigger) and out.type == "dropoff":
                delivery, decided = self._decide(delivery, out, parse_ts(out.event_time), at)
                journey = out.journey or ""
                if isinstance(decided, Withheld):
                    entry = (out.trigger_id, decided.reason)
                    delivery = delivery._replace(withheld={**delivery.withheld, journey: entry})
                elif journey in delivery.withheld:
                    withheld = {j: e for j, e in delivery.withheld.items() if j != journey}
                    delivery = delivery._replace(withheld=withheld)
                if decided is not None:
                    result.append(decided)
            elif isinstance(out, Resolution):
                held = [h for h in delivery.held if h.trigger.trigger_id == out.trigger_id]
                kept_back = delivery.withheld.get(out.journey)
                if kept_back is not None and kept_back[0] == out.trigger_id:
                    # Nothing went out for this drop-off, so there is nothing to cancel.
                    withheld = {j: e for j, e in delivery.withheld.items() if j != out.journey}
                    delivery = delivery._replace(withheld=withheld)
                    result.append(Withheld(out, cast(WithheldReason, kept_back[1])))
                elif held:  # back before the message went out: it never will
                    delivery = delivery._replace(
                        held=tuple(h for h in delivery.held if h not in held)
                    )
                    result.append(Withheld(held[0].trigger, "resolved_while_held"))
                else:
                    result.append(out)
            else:
                result.append(out)
        return delivery, result

    def release(self, delivery: Delivery, watermark: int) -> tuple[Delivery, list[Trigger]]:
        """Held triggers whose quiet window has ended by `watermark`."""
        due = [h.trigger for h in delivery.held if h.release_at <= watermark]
        if not due:
            return delivery, []
        kept = tuple(h for h in delivery.held if h.release_at > watermark)
        return delivery._replace(held=kept), due

    @staticmethod
    def next_release(delivery: Delivery) -> int | None:
        return min((h.release_at for h in delivery.held), default=None)

    def _decide(
        self, delivery: Delivery, trigger: Trigger, at: int, now: int
    ) -> tuple[Delivery, Trigger | Withheld | None]:
        rules = self.rules
        if in_holdout(trigger.user_id, rules.holdout_percent):
            return delivery, Withheld(trigger, "holdout")
        journey = trigger.journey or ""
        last = delivery.cooldowns.get(journey)
        if rules.cooldown_ms and last is not None and at - last < rules.cooldown_ms:
            return delivery, Withheld(trigger, "cooldown")
        recent = tuple(t for t in delivery.sent if at - t < rules.frequency_window_ms)
        if rules.frequency_cap and len(recent) >= rules.frequency_cap:
            return delivery._replace(sent=recent), Withheld(trigger, "frequency_cap")
        delivery = delivery._replace(
            sent=(*recent, at)[-max(rules.frequency_cap, 1) :],
            cooldowns={**delivery.cooldowns, journey: at},
        )
        release_at = self._quiet_until(at, delivery.tz)
        if release_at is None or release_at <= now:
            return delivery, trigger
        held = tuple(
            sorted(
                (*delivery.held, Held(release_at, trigger)),
                key=lambda h: (h.release_at, h.trigger.trigger_id),
            )
        )
        return delivery._replace(held=held), None

    def _quiet_until(self, at: int, tz: str | None) -> int | None:
        """End of the quiet window `at` falls in (event time, ms), or None if not quiet."""
        start, end = self.rules.quiet_start_min, self.rules.quiet_end_min
        if start is None or end is None:
            return None
        local = datetime.fromtimestamp(at / 1000, zone(tz or self.rules.default_timezone))
        minute = local.hour * 60 + local.minute
        quiet = start <= minute < end if start < end else (minute >= start or minute < end)
        if not quiet:
            return None
        day = local.date() if minute < end else local.date() + timedelta(days=1)
        release = datetime(day.year, day.month, day.day, end // 60, end % 60, tzinfo=local.tzinfo)
        return int(release.timestamp() * 1000)
