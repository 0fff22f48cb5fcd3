"""[communities]: community health per group chat (社群不群).

Stage 1 sends `group:<group_id>` a "chat" signal {action, member} for every group-chat event and
a "revenue" signal {amount, currency} for a purchase attributed to the group. Counts go into
buckets aligned to the epoch (floor(ts / bucket)); at bucket closes the last `window` is judged:

- silent: the group had >= active_messages messages within one window (since it last went
  silent), then nobody posted for `silent_after`. Raised at the first bucket close at least
  `silent_after` after the last message; recovered at the close after the next message.
- losing_members: net leaves (leaves - joins) in the window >= losing_members, and >=
  losing_fraction of the members the group had at the window start. Recovered at the first close
  where that no longer holds.

Each episode gives one "raised" and one "recovered" `CommunityAlert`. The member count is joins
minus leaves seen (never below 0), so it starts at 0 for a group already running. A group with
no signal for `forget_after` is forgotten; a group still silent then leaves the silent gauge
without a recovery record.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from linkwatch.durations import parse_duration
from linkwatch.events import format_ts
from linkwatch.signals import EntityOutput, EntityStep, Measure, MetricSpec, Published, Signal
from linkwatch.triggers import derive_id

HOUR: Final = 3_600_000
DAY: Final = 24 * HOUR
MESSAGE_ACTIONS: Final = frozenset({"message", "mention", "red_packet", "link_share"})
ACTIONS: Final = MESSAGE_ACTIONS | {"join", "leave"}
AlertKind = Literal["silent", "losing_members"]
Status = Literal["raised", "recovered"]
_DATE_TIME: Final[dict[str, Any]] = {"format": "date-time"}

METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec(
        "community_chat_total",
        "Group-chat actions seen by community health (join, leave, message, mention, "
        "red_packet, link_share)",
        ("action",),
        "counter",
    ),
    MetricSpec(
        "community_revenue_total",
        "Revenue attributed to a group chat, by currency",
        ("currency",),
        "counter",
    ),
    MetricSpec(
        "community_alerts_total",
        "Community alerts published, by alert (silent, losing_members) and status",
        ("alert", "status"),
        "counter",
    ),
    MetricSpec("community_groups_silent", "Groups currently silent", (), "gauge"),
    MetricSpec("community_groups_losing_members", "Groups currently losing members", (), "gauge"),
)
_GAUGES: Final[dict[AlertKind, str]] = {
    "silent": "community_groups_silent",
    "losing_members": "community_groups_losing_members",
}


@dataclass(frozen=True, slots=True)
class CommunityRules:
    enabled: bool = True
    window_ms: int = DAY
    bucket_ms: int = HOUR
    revenue_window_ms: int = 7 * DAY
    active_messages: int = 10
    silent_after_ms: int = DAY
    losing_members: int = 5
    losing_fraction: float = 0.05
    forget_after_ms: int = 30 * DAY


class CommunitySpec(BaseModel):
    """`[communities]` in the journeys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Watch group chats for health")
    window: str = Field(
        default="24h",
        description="Sliding window messages, active members, joins, leaves and revenue are "
        "counted over; a multiple of `bucket`",
    )
    bucket: str = Field(
        default="1h",
        description="Step of the sliding window: groups are judged at every bucket close "
        "(aligned to the epoch), so an alert comes at most one bucket late",
    )
    revenue_window: str = Field(
        default="7d",
        description="A purchase counts as a group's revenue when the buyer was active in the "
        "group (anything but leaving) at most this long before it and has not left since",
    )
    active_messages: int = Field(
        default=10,
        ge=1,
        description="Messages (message, mention, red_packet, link_share) a group must reach "
        "within one window before its silence is worth an alert",
    )
    silent_after: str = Field(
        default="24h",
        description="An active group with no message for this long is silent (longer than a "
        "night, so quiet hours do not count)",
    )
    losing_members: int = Field(
        default=5,
        ge=1,
        description="Net leaves (leaves - joins) within the window at which a group is losing "
        "members",
    )
    losing_fraction: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="...and at least this fraction of the members it had at the window start "
        "(0: the count alone decides)",
    )
    forget_after: str = Field(
        default="30d",
        description="A group with no signal for this long is forgotten (longer than `window` "
        "and `silent_after`)",
    )

    @field_validator("window", "bucket", "revenue_window", "silent_after", "forget_after")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        window, bucket = parse_duration(self.window), parse_duration(self.bucket)
        if window % bucket:
            raise ValueError(f"window {self.window} must be a multiple of bucket {self.bucket}")
        forget = parse_duration(self.forget_after)
        if forget <= max(window, parse_duration(self.silent_after)):
            raise ValueError("forget_after must be longer than window and silent_after")
        return self

    def rules(self) -> CommunityRules:
        return CommunityRules(
            enabled=self.enabled,
            window_ms=parse_duration(self.window),
            bucket_ms=parse_duration(self.bucket),
            revenue_window_ms=parse_duration(self.revenue_window),
            active_messages=self.active_messages,
            silent_after_ms=parse_duration(self.silent_after),
            losing_members=self.losing_members,
            losing_fraction=self.losing_fraction,
            forget_after_ms=parse_duration(self.forget_after),
        )


class CommunityAlert(BaseModel):
    """A group went silent or started losing members, or recovered (health topic, keyed
    "group:<id>")."""

    model_config = ConfigDict(frozen=True)

    type: Literal["community_alert"] = Field(default="community_alert", description="Record type")
    alert_id: str = Field(
        description="Deterministic: derived from the group, the alert, the status and the "
        "window end"
    )
    alert: AlertKind = Field(description="silent or losing_members")
    status: Status = Field(description="raised: the episode starts; recovered: it ends")
    group_id: str = Field(description="The group chat")
    messages: int = Field(description="Messages in the window (message, mention, ...)")
    active_members: int = Field(description="Distinct members who posted in the window")
    joins: int = Field(description="Joins in the window")
    leaves: int = Field(description="Leaves in the window")
    members: int = Field(description="Joins minus leaves seen so far (never below 0)")
    revenue: dict[str, str] = Field(
        description="Group-attributed revenue in the window: currency -> decimal amount"
    )
    last_message_at: str | None = Field(
        description="Event time of the newest message seen", json_schema_extra=_DATE_TIME
    )
    window_start: str = Field(description="Window start, event time", json_schema_extra=_DATE_TIME)
    window_end: str = Field(description="Window end, event time", json_schema_extra=_DATE_TIME)
    event_time: str = Field(
        description="When it was decided: the window end", json_schema_extra=_DATE_TIME
    )
    since: str | None = Field(
        description="For a recovery: the window end of the matching 'raised' alert",
        json_schema_extra=_DATE_TIME,
    )


class Bucket(NamedTuple):
    number: int  # floor(ts / bucket_ms)
    messages: int = 0
    joins: int = 0
    leaves: int = 0
    posters: tuple[str, ...] = ()  # sorted member hashes of who posted
    revenue: tuple[tuple[str, str], ...] = ()  # (currency, decimal amount), sorted by currency


class GroupState(NamedTuple):
    buckets: tuple[Bucket, ...]  # ascending number; only buckets the next window still covers
    members: int  # joins - leaves seen, never below 0
    last_message: int | None  # event time of the newest message
    last_signal: int  # event time of the newest signal (forgetting counts from it)
    eligible: bool  # reached active_messages in a window since it last went silent
    silent_since: int | None  # window end of the "silent" alert while silent
    losing_since: int | None  # window end of the "losing_members" alert while losing
    next_close: int  # the bucket close at which the group is judged next


class CommunityHealth:
    """`signals.EntityLogic` for group chats."""

    prefixes: tuple[str, ...] = ("group",)

    def __init__(self, rules: CommunityRules) -> None:
        self.rules = rules
        self._buckets_per_window = rules.window_ms // rules.bucket_ms

    def apply(self, entity: str, state: GroupState | None, signal: Signal) -> EntityStep:
        number = signal.ts // self.rules.bucket_ms
        action = signal.data.get("action")
        if signal.kind == "chat" and action in ACTIONS:
            posted = action in MESSAGE_ACTIONS
            add = Bucket(
                number,
                messages=int(posted),
                joins=int(action == "join"),
                leaves=int(action == "leave"),
                posters=(str(signal.data["member"]),) if posted else (),
            )
            measure = Measure("community_chat_total", (str(action),), 1)
        elif signal.kind == "revenue":
            amount, currency = Decimal(str(signal.data["amount"])), str(signal.data["currency"])
            add = Bucket(number, revenue=((currency, str(amount)),))
            measure = Measure("community_revenue_total", (currency,), float(amount))
        else:  # not in the catalog: nothing to count
            return EntityStep(state, [])
        close = (number + 1) * self.rules.bucket_ms
        if state is None:
            state = GroupState((), 0, None, signal.ts, False, None, None, close)
        state = state._replace(
            buckets=_add(state.buckets, add),
            members=max(0, state.members + add.joins - add.leaves),
            last_message=signal.ts if add.messages else state.last_message,
            last_signal=signal.ts,
            next_close=min(state.next_close, close),
        )
        return EntityStep(state, [measure])

    def wake(self, entity: str, state: GroupState, at: int) -> EntityStep:
        rules = self.rules
        first = at // rules.bucket_ms - self._buckets_per_window  # oldest bucket in the window
        total = _total(b for b in state.buckets if first <= b.number < at // rules.bucket_ms)
        outputs: list[EntityOutput] = []
        last_message, eligible = state.last_message, state.eligible
        silent_since, losing_since = state.silent_since, state.losing_since

        if silent_since is not None and last_message is not None and last_message >= silent_since:
            outputs += self._alert(entity, state, total, at, "silent", "recovered", silent_since)
            silent_since = None
        eligible = eligible or total.messages >= rules.active_messages
        went_quiet = last_message is not None and at - last_message >= rules.silent_after_ms
        if eligible and silent_since is None and went_quiet:
            outputs += self._alert(entity, state, total, at, "silent", "raised", None)
            silent_since, eligible = at, False

        net_leaves = total.leaves - total.joins
        losing = net_leaves >= rules.losing_members and net_leaves >= rules.losing_fraction * (
            state.members + net_leaves
        )
        if losing and losing_since is None:
            outputs += self._alert(entity, state, total, at, "losing_members", "raised", None)
            losing_since = at
        elif not losing and losing_since is not None:
            outputs += self._alert(
                entity, state, total, at, "losing_members", "recovered", losing_since
            )
            losing_since = None

        forget_at = self._close_at_or_after(state.last_signal + rules.forget_after_ms)
        if at >= forget_at:  # the window is empty by now (forget_after > window)
            episodes: dict[AlertKind, int | None] = {
                "silent": silent_since,
                "losing_members": losing_since,
            }
            outputs += [Measure(_GAUGES[k], (), -1) for k, s in episodes.items() if s is not None]
            return EntityStep(None, outputs)
        kept = tuple(b for b in state.buckets if b.number > first)
        wakes = [forget_at]
        if kept or losing_since is not None:
            wakes.append(at + rules.bucket_ms)
        if eligible and silent_since is None and last_message is not None:
            wakes.append(self._close_at_or_after(last_message + rules.silent_after_ms))
        return EntityStep(
            state._replace(
                buckets=kept,
                eligible=eligible,
                silent_since=silent_since,
                losing_since=losing_since,
                next_close=min(wakes),
            ),
            outputs,
        )

    def next_wake(self, state: GroupState) -> int:
        return state.next_close

    def dump(self, state: GroupState) -> Any:
        buckets = [[*b[:4], list(b.posters), [list(r) for r in b.revenue]] for b in state.buckets]
        return [buckets, *state[1:]]

    def load(self, data: Any) -> GroupState:
        buckets = tuple(
            Bucket(number, messages, joins, leaves, tuple(posters), tuple(map(tuple, revenue)))
            for number, messages, joins, leaves, posters, revenue in data[0]
        )
        return GroupState(buckets, *data[1:])

    def _close_at_or_after(self, ts: int) -> int:
        return -(-ts // self.rules.bucket_ms) * self.rules.bucket_ms

    def _alert(
        self,
        entity: str,
        state: GroupState,
        total: Bucket,
        at: int,
        alert: AlertKind,
        status: Status,
        since: int | None,
    ) -> list[EntityOutput]:
        record = CommunityAlert(
            alert_id=derive_id("community_alert", entity, alert, status, str(at)),
            alert=alert,
            status=status,
            group_id=entity.partition(":")[2],
            messages=total.messages,
            active_members=len(total.posters),
            joins=total.joins,
            leaves=total.leaves,
            members=state.members,
            revenue=dict(total.revenue),
            last_message_at=None if state.last_message is None else format_ts(state.last_message),
            window_start=format_ts(at - self.rules.window_ms),
            window_end=format_ts(at),
            event_time=format_ts(at),
            since=None if since is None else format_ts(since),
        )
        return [
            Published("health", entity, record),
            Measure("community_alerts_total", (alert, status), 1),
            Measure(_GAUGES[alert], (), 1 if status == "raised" else -1),
        ]


def _add(buckets: tuple[Bucket, ...], add: Bucket) -> tuple[Bucket, ...]:
    """`buckets` with `add` counted into the bucket of its number (kept in order)."""
    before = tuple(b for b in buckets if b.number < add.number)
    after = tuple(b for b in buckets if b.number > add.number)
    same = tuple(b for b in buckets if b.number == add.number)
    return (*before, _total((*same, add), add.number), *after)


def _total(buckets: Iterable[Bucket], number: int = 0) -> Bucket:
    """The counts of `buckets` added up; posters are a set union, revenue sums per currency."""
    messages = joins = leaves = 0
    posters: set[str] = set()
    revenue: dict[str, Decimal] = {}
    for b in buckets:
        messages, joins, leaves = messages + b.messages, joins + b.joins, leaves + b.leaves
        posters.update(b.posters)
        for currency, amount in b.revenue:
            revenue[currency] = revenue.get(currency, Decimal(0)) + Decimal(amount)
    return Bucket(
        number,
        messages,
        joins,
        leaves,
        tuple(sorted(posters)),
        tuple((c, format(revenue[c], "f")) for c in sorted(revenue)),
    )
