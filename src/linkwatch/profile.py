"""Per-user profile kept in stage-1 state: the retention loop (流量不留), fake-traffic flags
(流量作弊) and the signals only a user's own history can tell (who brought them, where they
chat, whether they are new).

Pure and event-time based like the engine: a profile changes only when one of the user's events
is applied (in (ts, event_id) order), and its deadlines fire when the watermark passes them, so
replay and the live worker agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from linkwatch.commerce import space_of
from linkwatch.events import (
    ClickEvent,
    Event,
    GroupChatEvent,
    PurchaseEvent,
    ShareEvent,
    format_ts,
)
from linkwatch.fission import final_level
from linkwatch.signals import ENTITY_LEVEL, Signal, signal
from linkwatch.triggers import REMEDIES, Cause, Trigger, derive_id

if TYPE_CHECKING:
    from linkwatch.journeys import JourneySet, Matcher

DAY: Final = 86_400_000
# Joining a brand group, or following the brand (any event with props.follow = true).
DEFAULT_RETAINED_BY: Final[tuple[dict[str, Any], ...]] = (
    {"kind": "group_chat", "action": "join"},
    {"props.follow": True},
)


def _parse(duration: str) -> int:
    from linkwatch.journeys import parse_duration  # here: journeys imports this module

    return parse_duration(duration)


def _compile_matches(specs: list[dict[str, Any]]) -> tuple[Matcher, ...]:
    """Match tables compiled like a journey's `exit`; ValueError names every problem."""
    from linkwatch.journeys import _compile_match  # here: journeys imports this module

    problems: list[str] = []
    matchers = tuple(
        _compile_match(spec, f"retained_by[{i}]", problems) for i, spec in enumerate(specs)
    )
    if problems:
        raise ValueError("; ".join(problems))
    return matchers


def _predicate(matcher: Matcher) -> Callable[[Event], bool]:
    """The matcher's conditions alone: the caller has already picked it by the event's kind."""
    tests = tuple(condition.compile() for condition in matcher.conditions)
    if len(tests) == 1:
        return tests[0]
    return lambda event: all(test(event) for test in tests)


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetentionRules:
    enabled: bool = False
    not_retained_after_ms: int = 7 * DAY
    dormant_after_ms: int = 30 * DAY
    retained_by: tuple[Matcher, ...] = ()
    profile_ttl_ms: int = 90 * DAY


class RetentionSpec(BaseModel):
    """`[retention]` in the journeys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    not_retained_after: str = Field(
        default="7d",
        description="A user acquired on a public channel and not retained by then gets a "
        "not_retained trigger",
    )
    dormant_after: str = Field(
        default="30d", description="A retained user silent this long gets a dormant trigger"
    )
    retained_by: list[dict[str, Any]] = Field(
        default_factory=lambda: [dict(m) for m in DEFAULT_RETAINED_BY],
        min_length=1,
        description="Match tables (as a journey's exit); an applied event matching any retains",
    )
    profile_ttl: str = Field(
        default="90d",
        description="A profile is kept this long after the user's last applied event (whenever "
        "profiles are kept, even with retention disabled)",
    )

    @field_validator("not_retained_after", "dormant_after", "profile_ttl")
    @classmethod
    def _duration(cls, value: str) -> str:
        _parse(value)
        return value

    @field_validator("retained_by")
    @classmethod
    def _matches(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from pydantic import TypeAdapter

        from linkwatch.journeys import MatchValue  # here: journeys imports this module

        parsed = TypeAdapter(list[dict[str, MatchValue]]).validate_python(value)
        _compile_matches(parsed)
        return parsed

    @model_validator(mode="after")
    def _deadlines_within_the_profile_life(self) -> RetentionSpec:
        # A deadline past the profile's expiry could be lost depending on how far the watermark
        # jumps at a time: every deadline must fall inside the profile's life.
        ttl = _parse(self.profile_ttl)
        for name in ("not_retained_after", "dormant_after"):
            if _parse(getattr(self, name)) > ttl:
                raise ValueError(f"{name} must not exceed profile_ttl ({self.profile_ttl})")
        return self

    def rules(self) -> RetentionRules:
        return RetentionRules(
            enabled=self.enabled,
            not_retained_after_ms=_parse(self.not_retained_after),
            dormant_after_ms=_parse(self.dormant_after),
            retained_by=_compile_matches(self.retained_by),
            profile_ttl_ms=_parse(self.profile_ttl),
        )


@dataclass(frozen=True, slots=True)
class FakeTrafficRules:
    enabled: bool = False
    burst_clicks: int = 20
    burst_window_ms: int = 60_000
    min_dwell_ms: int = 2_000
    flag_for_ms: int = DAY


class FakeTrafficSpec(BaseModel):
    """`[fake_traffic]` in the journeys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    burst_clicks: int = Field(
        default=20, ge=2, le=1000, description="Clicks in a burst that flag the user"
    )
    burst_window: str = Field(default="1m", description="...all within this time")
    min_dwell: str = Field(default="2s", description="...each less than this after the one before")
    flag_for: str = Field(default="24h", description="How long a flag lasts after the burst")

    @field_validator("burst_window", "min_dwell", "flag_for")
    @classmethod
    def _duration(cls, value: str) -> str:
        _parse(value)
        return value

    def rules(self) -> FakeTrafficRules:
        return FakeTrafficRules(
            enabled=self.enabled,
            burst_clicks=self.burst_clicks,
            burst_window_ms=_parse(self.burst_window),
            min_dwell_ms=_parse(self.min_dwell),
            flag_for_ms=_parse(self.flag_for),
        )


# -- the profile --------------------------------------------------------------------------------


class Profile(NamedTuple):
    """What stage 1 remembers of one user beyond their journeys."""

    first_seen: int  # event time of the first applied event
    acquired_by: str  # its event_id
    channel: str  # its channel: where the user was acquired
    via_share: str | None  # its ref_share_id: the share that brought the user, if any
    retained: int | None  # event time of the first applied event matching retained_by
    last_active: int  # event time of the latest applied event
    last_event: str  # its event_id (it sets the dormant deadline)
    reminded: int  # the latest retention deadline already handled, fired or not (0: none)
    group: tuple[str, int] | None  # latest group activity (group_id, ts), not left since
    clicks: tuple[int, ...]  # the current run of quick clicks (bot detection), newest last
    flagged_until: int  # fake traffic: events before this event time are flagged (0: never)


class BotFlagged(NamedTuple):
    """A user's clicks formed a bot-like burst: their events are flagged until `until`."""

    user_id: str
    ts: int  # event time of the click that completed the burst
    until: int  # the flag lasts until this event time (exclusive)
    clicks: int  # clicks in the burst


class FlaggedEvent(NamedTuple):
    """An applied event of a flagged user: counted, but fed to no journey, trigger or signal."""

    event: Event


# The trigger types a profile deadline produces (decided by suppression like drop-offs).
NOT_RETAINED: Final = "not_retained"
DORMANT: Final = "dormant"
PROFILE_TRIGGERS: Final = frozenset({NOT_RETAINED, DORMANT})


class Observed(NamedTuple):
    profile: Profile
    flagged: bool  # the event is from a flagged user: it feeds nothing
    flag: BotFlagged | None  # the user has just been flagged, by this event
    signals: list[Signal] | None  # what the (unflagged) event implies


class Profiles:
    """The profile rules of one journeys file. Stateless itself: a profile is passed in and a
    new one returned."""

    def __init__(self, journeys: JourneySet) -> None:
        self.retention = journeys.retention
        self._retention_on = self.retention.enabled
        self._not_retained_after_ms = self.retention.not_retained_after_ms
        self._dormant_after_ms = self.retention.dormant_after_ms
        # Per kind, one predicate per retained_by table that can match it (the hot path).
        self._retains: dict[str, tuple[Callable[[Event], bool], ...]] = {}
        if self.retention.enabled:
            for matcher in self.retention.retained_by:
                test = _predicate(matcher)
                for kind in matcher.kinds:
                    self._retains[kind] = (*self._retains.get(kind, ()), test)
        fake = journeys.fake_traffic
        self.fake = fake if fake.enabled else None
        communities = journeys.communities
        self.revenue_window_ms = communities.revenue_window_ms if communities.enabled else None
        self.shares = journeys.fission.enabled
        self.seen_level = final_level(journeys.fission) if journeys.tiers.enabled else None
        lifelong = bool(
            self.retention.enabled
            or self.shares
            or self.seen_level is not None
            or self.revenue_window_ms is not None
        )
        self.enabled = lifelong or self.fake is not None
        # Kinds of event that may imply a signal (besides a user's first event).
        self._signal_kinds = frozenset(
            ({"share"} if self.shares else set())
            | ({"purchase"} if self.revenue_window_ms is not None else set())
        )
        # Only bot detection needs no history: then a profile lasts as long as a flag.
        self.ttl_ms = (
            self.retention.profile_ttl_ms if lifelong else max(fake.flag_for_ms, fake.min_dwell_ms)
        )

    # -- deadlines ---------------------------------------------------------------------------

    def due(self, profile: Profile) -> int | None:
        """The pending retention deadline, if any."""
        if not self._retention_on:
            return None
        if profile.retained is None:
            if profile.reminded or space_of(profile.channel) != "public":
                return None
            return profile.first_seen + self._not_retained_after_ms
        deadline = profile.last_active + self._dormant_after_ms
        return deadline if deadline > profile.reminded else None  # once per silence

    def wake(self, profile: Profile) -> int:
        """When the profile next needs time to pass: its deadline, else its expiry (a deadline
        never falls after the expiry: see RetentionSpec)."""
        due = self.due(profile)
        return due if due is not None else profile.last_active + self.ttl_ms

    def fire(self, user_id: str, profile: Profile, deadline: int) -> tuple[Profile, Trigger | None]:
        """The retention trigger due at `deadline` (None while the user is flagged: no budget
        spent on bots); the profile remembers it was handled."""
        handled = profile._replace(reminded=deadline)
        if deadline < profile.flagged_until:
            return handled, None
        kind = NOT_RETAINED if profile.retained is None else DORMANT
        cause = Cause.NOT_RETAINED if profile.retained is None else Cause.DORMANT
        # The event that set the deadline: the first one, or the latest one.
        setter = profile.acquired_by if profile.retained is None else profile.last_event
        at = format_ts(deadline)
        trigger = Trigger(
            trigger_id=derive_id(kind, user_id, setter),
            type=kind,
            journey=None,
            user_id=user_id,
            last_step=None,
            missed_step=None,
            cause=cause,
            remedy=REMEDIES[cause],
            event_time=at,
            deadline=at,
            last_step_at=format_ts(profile.last_active),
            started_by=setter,
            # A dict, validated into TriggerContext by Trigger (one validator call, not two).
            context={"channel": profile.channel, "ref_share_id": profile.via_share},
        )
        return handled, trigger

    # -- applying an event -------------------------------------------------------------------

    def observe(self, profile: Profile | None, event: Event) -> Observed:
        """The profile after `event` is applied, whether the event is flagged, and what it
        implies (a new flag, signals)."""
        ts = event.ts
        event_id = event.event_id
        first = profile is None
        if profile is None:
            profile = Profile(
                ts,
                event_id,
                event.channel,
                getattr(event, "ref_share_id", None),
                None,
                ts,
                event_id,
                0,
                None,
                (),
                0,
            )
        flag = None
        clicks, flagged_until = profile.clicks, profile.flagged_until
        fake = self.fake
        if fake is not None:
            clicks, burst = self._clicks(fake, clicks, event)
            if burst:
                if ts >= flagged_until:
                    flag = BotFlagged(event.user_id, ts, ts + fake.flag_for_ms, burst)
                flagged_until = ts + fake.flag_for_ms  # a new burst extends the flag
        if ts < flagged_until:  # flagged: activity, but nothing else is learnt from it
            profile = profile._replace(
                last_active=ts, last_event=event_id, clicks=clicks, flagged_until=flagged_until
            )
            return Observed(profile, True, flag, None)
        retained = profile.retained
        if retained is None:
            for test in self._retains.get(event.kind, ()):
                if test(event):
                    retained = ts
                    break
        signals = None
        if first or event.kind in self._signal_kinds:
            signals = self._signals(profile, event, first)
        group = profile.group
        if self.revenue_window_ms is not None and isinstance(event, GroupChatEvent):
            if event.action != "leave":
                group = (event.group_id, ts)
            elif group is not None and group[0] == event.group_id:
                group = None
        profile = Profile(
            profile.first_seen,
            profile.acquired_by,
            profile.channel,
            profile.via_share,
            retained,
            ts,
            event_id,
            profile.reminded,
            group,
            clicks,
            flagged_until,
        )
        return Observed(profile, False, None, signals)

    @staticmethod
    def _clicks(
        fake: FakeTrafficRules, clicks: tuple[int, ...], event: Event
    ) -> tuple[tuple[int, ...], int]:
        """The run of quick clicks after `event`, and the clicks in the burst it completes
        (0: none). Any other kind of event ends the run: a burst is clicks and nothing else."""
        if event.kind != "click":
            return (), 0
        ts = event.ts
        if not clicks or ts - clicks[-1] >= fake.min_dwell_ms:
            return (ts,), 0
        needed = fake.burst_clicks
        run = (*clicks, ts)
        if len(run) < needed:
            return run, 0
        run = run[-needed:]
        burst = needed if ts - run[0] <= fake.burst_window_ms else 0
        return run[1:], burst  # the newest needed - 1: enough to judge the next click

    def _signals(self, profile: Profile, event: Event, first: bool) -> list[Signal]:
        """The profile-derived signals of an applied, unflagged event (see signals.py)."""
        found: list[Signal] = []
        user_id = event.user_id
        ts = event.ts
        why = event.event_id
        data: dict[str, Any]
        if first:
            ref = getattr(event, "ref_share_id", None)
            if self.seen_level is not None:
                data = {"channel": event.channel, "via_share": ref}
                found.append(signal(self.seen_level, f"user:{user_id}", "seen", ts, data, why))
            if self.shares and ref and isinstance(event, ClickEvent):
                data = {"user": user_id}
                found.append(signal(ENTITY_LEVEL, f"share:{ref}", "new_user", ts, data, why))
        if self.shares and isinstance(event, ShareEvent):
            data = {
                "sharer": user_id,
                "parent": profile.via_share,
                "target": event.target,
                "group_id": event.group_id,
            }
            found.append(signal(ENTITY_LEVEL, f"share:{event.share_id}", "share", ts, data, why))
        elif self.revenue_window_ms is not None and isinstance(event, PurchaseEvent):
            group = profile.group
            if group is not None and ts - group[1] <= self.revenue_window_ms:
                data = {"amount": str(event.amount), "currency": event.currency}
                found.append(signal(ENTITY_LEVEL, f"group:{group[0]}", "revenue", ts, data, why))
        return found
