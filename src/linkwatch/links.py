"""[links]: broken-link alerts per link and per campaign (链路不连).

Stage 1 sends `link:<link_id>` and `campaign:<campaign_id>` two kinds of signal: "click"
{failed, via_share} at the click's time, and "dropoff" at the deadline of a drop-off whose user
clicked that link and went no further. Counts go into buckets aligned to the epoch
(floor(ts / bucket)); at every bucket close the last `window` is judged:

- broken: clicks >= min_clicks and (dead_ends / clicks >= dead_end_rate or
  dropoffs / clicks >= dropoff_rate). One `LinkAlert` "broken", then silence while broken.
  A click can end several journeys at once, so drop-offs are counted per journey and the
  journey that lost the most decides (adding journeys up would count one visitor twice);
- recovered: while broken, both rates are below their thresholds, whatever the number of clicks
  (a window without clicks counts as 0: nobody is being lost). One `LinkAlert` "recovered";
  after that the entity can break again.

Closes are the only moments anything is decided, so the outputs depend on the signals alone,
never on how the watermark moved. An entity is forgotten once its window is empty and it is not
broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import Any, Final, Literal, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from linkwatch.durations import parse_duration
from linkwatch.events import format_ts
from linkwatch.signals import EntityOutput, EntityStep, Measure, MetricSpec, Published, Signal
from linkwatch.triggers import derive_id

EntityKind = Literal["link", "campaign"]
Reason = Literal["dead_end_rate", "dropoff_rate"]
_DATE_TIME: Final[dict[str, Any]] = {"format": "date-time"}

METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec(
        "link_alerts_total",
        "Link alerts published, by entity kind (link, campaign) and status (broken, recovered)",
        ("kind", "status"),
        "counter",
    ),
    MetricSpec("links_broken", "Links or campaigns currently broken", ("kind",), "gauge"),
    MetricSpec("link_clicks_total", "Clicks seen by link health", ("kind",), "counter"),
    MetricSpec(
        "link_dead_ends_total", "Clicks whose landing failed (status >= 400)", ("kind",), "counter"
    ),
)


@dataclass(frozen=True, slots=True)
class LinkHealthRules:
    enabled: bool = True
    window_ms: int = 3_600_000
    bucket_ms: int = 300_000
    min_clicks: int = 20
    dead_end_rate: float = 0.25
    dropoff_rate: float = 0.95


class LinkHealthSpec(BaseModel):
    """`[links]` in the journeys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Watch links and campaigns for breakage")
    window: str = Field(
        default="1h",
        description="Sliding window the rates are computed over; a multiple of `bucket`",
    )
    bucket: str = Field(
        default="5m",
        description="Step of the sliding window: the rates are judged at every bucket close "
        "(buckets are aligned to the epoch), so an alert comes at most one bucket late",
    )
    min_clicks: int = Field(
        default=20, ge=1, description="Clicks the window must hold before a link can break"
    )
    dead_end_rate: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="Broken when dead ends (landing status >= 400) / clicks reaches this",
    )
    dropoff_rate: float = Field(
        default=0.95,
        gt=0,
        description="Broken when drop-offs right after a click (in the journey that lost the "
        "most) / clicks reaches this. Drop-offs count at their deadline, so the ratio can pass "
        "1 when traffic falls",
    )

    @field_validator("window", "bucket")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @model_validator(mode="after")
    def _window_is_whole_buckets(self) -> Self:
        if parse_duration(self.window) % parse_duration(self.bucket):
            raise ValueError(f"window {self.window} must be a multiple of bucket {self.bucket}")
        return self

    def rules(self) -> LinkHealthRules:
        return LinkHealthRules(
            enabled=self.enabled,
            window_ms=parse_duration(self.window),
            bucket_ms=parse_duration(self.bucket),
            min_clicks=self.min_clicks,
            dead_end_rate=self.dead_end_rate,
            dropoff_rate=self.dropoff_rate,
        )


class LinkAlert(BaseModel):
    """A link or campaign broke, or recovered (health topic, keyed "link:<id>" or
    "campaign:<id>")."""

    model_config = ConfigDict(frozen=True)

    type: Literal["link_alert"] = Field(default="link_alert", description="Record type")
    alert_id: str = Field(
        description="Deterministic: derived from the entity, the status and the window end"
    )
    status: Literal["broken", "recovered"] = Field(description="What changed")
    entity_kind: EntityKind = Field(description="Whether `entity_id` is a link or a campaign")
    entity_id: str = Field(description="The link_id or campaign_id")
    reasons: tuple[Reason, ...] = Field(
        description="Thresholds reached in the window (empty when recovered)"
    )
    clicks: int = Field(description="Clicks in the window")
    share_clicks: int = Field(description="Of those, clicks that came through a share")
    dead_ends: int = Field(description="Clicks in the window whose landing failed")
    dropoffs: int = Field(
        description="Drop-offs right after a click with their deadline in the window, in the "
        "journey that lost the most"
    )
    dropoff_journey: str | None = Field(description="That journey (null without drop-offs)")
    dead_end_rate: float = Field(description="dead_ends / clicks, 4 decimals (0 without clicks)")
    dropoff_rate: float = Field(description="dropoffs / clicks, 4 decimals (0 without clicks)")
    window_start: str = Field(description="Window start, event time", json_schema_extra=_DATE_TIME)
    window_end: str = Field(description="Window end, event time", json_schema_extra=_DATE_TIME)
    event_time: str = Field(
        description="When it was decided: the window end", json_schema_extra=_DATE_TIME
    )
    broken_since: str | None = Field(
        description="For a recovery: the window end of the matching 'broken' alert",
        json_schema_extra=_DATE_TIME,
    )


class Bucket(NamedTuple):
    number: int  # floor(ts / bucket_ms)
    clicks: int = 0
    share_clicks: int = 0
    dead_ends: int = 0
    dropoffs: tuple[tuple[str, int], ...] = ()  # (journey, drop-offs), sorted by journey


class LinkState(NamedTuple):
    buckets: tuple[Bucket, ...]  # ascending number; only buckets the next window still covers
    broken_since: int | None  # window end of the "broken" alert; None while healthy
    next_close: int  # the bucket close at which the window is judged next


class LinkHealth:
    """`signals.EntityLogic` for links and campaigns."""

    prefixes: tuple[str, ...] = ("link", "campaign")

    def __init__(self, rules: LinkHealthRules) -> None:
        self.rules = rules
        self._buckets_per_window = rules.window_ms // rules.bucket_ms

    def apply(self, entity: str, state: LinkState | None, signal: Signal) -> EntityStep:
        number = signal.ts // self.rules.bucket_ms
        if signal.kind == "click":
            add = Bucket(
                number,
                clicks=1,
                share_clicks=int(bool(signal.data.get("via_share"))),
                dead_ends=int(bool(signal.data.get("failed"))),
            )
        elif signal.kind == "dropoff":
            add = Bucket(number, dropoffs=((str(signal.data.get("journey")), 1),))
        else:  # not in the catalog: nothing to count
            return EntityStep(state, [])
        close = (number + 1) * self.rules.bucket_ms
        if state is None:
            state = LinkState((add,), None, close)
        else:
            buckets, broken_since, next_close = state
            state = LinkState(_add(buckets, add), broken_since, min(next_close, close))
        kind = _kind(entity)
        outputs: list[EntityOutput] = []
        if signal.kind == "click":
            outputs.append(Measure("link_clicks_total", (kind,), 1))
            if add.dead_ends:
                outputs.append(Measure("link_dead_ends_total", (kind,), 1))
        return EntityStep(state, outputs)

    def wake(self, entity: str, state: LinkState, at: int) -> EntityStep:
        bucket = self.rules.bucket_ms
        first = at // bucket - self._buckets_per_window  # oldest bucket number in the window
        end = at // bucket
        # The window's totals (`_plus` over its buckets), added up in one pass.
        clicks = share_clicks = dead_ends = 0
        dropoffs: tuple[tuple[str, int], ...] = ()
        for b in state.buckets:
            if first <= b.number < end:
                clicks += b.clicks
                share_clicks += b.share_clicks
                dead_ends += b.dead_ends
                if b.dropoffs:
                    dropoffs = _merge(dropoffs, b.dropoffs)
        total = Bucket(0, clicks, share_clicks, dead_ends, dropoffs)
        reasons = self._reasons(total)
        outputs: list[EntityOutput] = []
        broken_since = state.broken_since
        if broken_since is None and reasons and total.clicks >= self.rules.min_clicks:
            outputs = self._alert(entity, "broken", reasons, total, at, None)
            broken_since = at
        elif broken_since is not None and not reasons:
            outputs = self._alert(entity, "recovered", (), total, at, broken_since)
            broken_since = None
        kept = tuple(b for b in state.buckets if b.number > first)
        if not kept and broken_since is None:
            return EntityStep(None, outputs)
        next_close = at + bucket
        if broken_since is None and total.clicks < self.rules.min_clicks:
            # Until a new signal arrives the window only loses clicks: it cannot break. Sleep
            # until its last bucket leaves it (a new signal wakes it at its bucket's close).
            next_close = (kept[-1].number + self._buckets_per_window + 1) * bucket
        return EntityStep(LinkState(kept, broken_since, next_close), outputs)

    def next_wake(self, state: LinkState) -> int:
        return state.next_close

    def dump(self, state: LinkState) -> Any:
        buckets = [[*b[:4], [list(d) for d in b.dropoffs]] for b in state.buckets]
        return [buckets, state.broken_since, state.next_close]

    def load(self, data: Any) -> LinkState:
        buckets, broken_since, next_close = data
        return LinkState(
            tuple(
                Bucket(number, clicks, share_clicks, dead_ends, tuple(map(tuple, dropoffs)))
                for number, clicks, share_clicks, dead_ends, dropoffs in buckets
            ),
            broken_since,
            next_close,
        )

    def _reasons(self, total: Bucket) -> tuple[Reason, ...]:
        if not total.clicks:
            return ()
        reasons: list[Reason] = []
        if total.dead_ends / total.clicks >= self.rules.dead_end_rate:
            reasons.append("dead_end_rate")
        if _worst_journey(total)[1] / total.clicks >= self.rules.dropoff_rate:
            reasons.append("dropoff_rate")
        return tuple(reasons)

    def _alert(
        self,
        entity: str,
        status: Literal["broken", "recovered"],
        reasons: tuple[Reason, ...],
        total: Bucket,
        at: int,
        broken_since: int | None,
    ) -> list[EntityOutput]:
        kind = _kind(entity)
        entity_id = entity.partition(":")[2]
        clicks = total.clicks
        journey, dropoffs = _worst_journey(total)
        alert = LinkAlert(
            alert_id=derive_id("link_alert", entity, status, str(at)),
            status=status,
            entity_kind=kind,
            entity_id=entity_id,
            reasons=reasons,
            clicks=clicks,
            share_clicks=total.share_clicks,
            dead_ends=total.dead_ends,
            dropoffs=dropoffs,
            dropoff_journey=journey,
            dead_end_rate=round(total.dead_ends / clicks, 4) if clicks else 0.0,
            dropoff_rate=round(dropoffs / clicks, 4) if clicks else 0.0,
            window_start=format_ts(at - self.rules.window_ms),
            window_end=format_ts(at),
            event_time=format_ts(at),
            broken_since=None if broken_since is None else format_ts(broken_since),
        )
        return [
            Published("health", entity, alert),
            Measure("link_alerts_total", (kind, status), 1),
            Measure("links_broken", (kind,), 1 if status == "broken" else -1),
        ]


def _kind(entity: str) -> EntityKind:
    return "campaign" if entity.startswith("campaign:") else "link"


def _add(buckets: tuple[Bucket, ...], add: Bucket) -> tuple[Bucket, ...]:
    """`buckets` with `add` counted into the bucket of its number (kept in order)."""
    # Signals mostly come in time order: into the last bucket, or a new one after it.
    if not buckets:
        return (add,)
    last = buckets[-1]
    if last.number == add.number:
        return (*buckets[:-1], _plus(add, last))
    if last.number < add.number:
        return (*buckets, add)
    before = tuple(b for b in buckets if b.number < add.number)
    after = tuple(b for b in buckets if b.number > add.number)
    merged = reduce(_plus, (b for b in buckets if b.number == add.number), add)
    return (*before, merged, *after)


def _plus(a: Bucket, b: Bucket) -> Bucket:
    """The counts of both, under `a`'s number."""
    return Bucket(
        a.number,
        a.clicks + b.clicks,
        a.share_clicks + b.share_clicks,
        a.dead_ends + b.dead_ends,
        _merge(a.dropoffs, b.dropoffs),
    )


def _merge(
    a: tuple[tuple[str, int], ...], b: tuple[tuple[str, int], ...]
) -> tuple[tuple[str, int], ...]:
    """Per-journey counts of both, sorted by journey."""
    # Either side empty: the other, already sorted with one count per journey.
    if not b:
        return a
    if not a:
        return b
    counts = dict(a)
    for journey, n in b:
        counts[journey] = counts.get(journey, 0) + n
    return tuple(sorted(counts.items()))


def _worst_journey(total: Bucket) -> tuple[str | None, int]:
    """The journey with the most drop-offs (ties: the first by name) and its count."""
    # `dropoffs` is sorted by journey and max() keeps the first of equals.
    return max(total.dropoffs, key=lambda j: j[1], default=(None, 0))
