"""The event contract: the four kinds of input event LinkWatch reads.

Every event is a JSON object keyed by `kind`. Times are normalised to integer epoch
milliseconds (UTC) on the way in; the engine never sees a string timestamp.

Unknown top-level fields are accepted and ignored: producers may add fields before
LinkWatch knows them, and keeping them would grow per-user state without bound. Data a
journey should match on belongs in `props`, which is kept (bounded).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticKnownError

# Bounds on input sizes: a record is at most this many bytes before it is even parsed.
MAX_RECORD_BYTES: Final = 64 * 1024
MAX_PROPS: Final = 32
MAX_PROP_KEY_CHARS: Final = 64
MAX_PROP_VALUE_CHARS: Final = 1024
MAX_URL_CHARS: Final = 2048

# Event times outside this range are rejected outright: they come from broken clocks or
# unit mistakes (seconds sent as milliseconds), and would poison the watermark.
MIN_TS_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TS_MS: Final = 4_102_444_800_000  # 2100-01-01T00:00:00Z

KINDS: Final = ("click", "share", "purchase", "group_chat")
# Channels the domain names (online, community and offline spaces). The contract accepts any
# identifier; metrics count unknown ones as "other" so labels stay a bounded set.
CHANNELS: Final = (
    "article",
    "ad",
    "search",
    "web",
    "app",
    "mini_program",
    "group_chat",
    "moments",
    "offline_store",
)
Kind = Literal["click", "share", "purchase", "group_chat"]
Page = Literal["content", "landing", "product", "detail", "search", "cart", "checkout", "other"]
ShareTarget = Literal["group_chat", "moments", "direct", "other"]
GroupAction = Literal["join", "leave", "message", "mention", "red_packet", "link_share"]

Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]
# Channels become metric labels later, so they are short identifiers, not free text.
Channel = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Url = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL_CHARS)]
PropKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROP_KEY_CHARS)]
PropValue = (
    Annotated[str, StringConstraints(max_length=MAX_PROP_VALUE_CHARS)]
    | int
    | Annotated[float, Field(allow_inf_nan=False)]
    | bool
    | None
)


# RFC 3339 date-time, strictly (fromisoformat alone also takes week dates, basic format...).
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?"
)


def _parse_ts(value: Any) -> Any:
    """Accept RFC 3339 with an explicit offset, or integer epoch milliseconds."""
    if isinstance(value, bool):
        return value  # let the int validator reject it as a wrong type
    if isinstance(value, str):
        form = _RFC3339.fullmatch(value)
        parsed = None
        if form is not None:
            try:
                parsed = datetime.fromisoformat(value.upper())
            except ValueError:
                parsed = None  # e.g. month 13: right shape, not a date
        if parsed is None:
            raise ValueError(
                "must be RFC 3339 with an offset (e.g. 2024-05-01T12:00:00+08:00) "
                "or integer epoch milliseconds"
            )
        if form is None or form.group("offset") is None:
            raise ValueError("RFC 3339 timestamp needs an offset (Z or +hh:mm)")
        return int(parsed.timestamp() * 1000)
    return value


@lru_cache(maxsize=1024)
def check_timezone(name: str) -> str:
    """An IANA timezone name (e.g. Asia/Shanghai) this machine knows, or ValueError."""
    try:
        ZoneInfo(name)
    # OSError: a name that is a directory of the zone database (e.g. "Asia") fails on open.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown timezone {name!r} (use an IANA name, e.g. Asia/Shanghai)"
        ) from None
    return name


def _parse_amount(value: Any) -> Any:
    """Amounts are decimals: a JSON number or a decimal string, never a float artefact."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        # Refused as a wrong type here: strict validation would call it a wrong value.
        raise PydanticKnownError("decimal_type")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return _bounded(Decimal(repr(value)))
    if isinstance(value, int):
        return _bounded(Decimal(value))
    if isinstance(value, str):
        try:
            parsed = Decimal(value)
        except InvalidOperation:
            raise ValueError("must be a decimal number") from None
        if not parsed.is_finite():
            raise ValueError("must be a finite number")
        return _bounded(parsed)
    return value  # a Decimal already


def _bounded(amount: Decimal) -> Decimal:
    """Refuse magnitudes no amount has before the digit checks see them: with an exponent near
    Decimal's limits (e.g. "1e999999999") they overflow, or round a tiny amount to 0 and let it
    through. A negative one is refused as negative, like any other."""
    if amount.is_zero() or -7 <= amount.adjusted() <= 18:
        return amount
    if amount < 0:
        raise PydanticKnownError("greater_than_equal", {"ge": 0})
    raise ValueError("must be below 10^18, with at most 6 decimal places")


Timezone = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(check_timezone)
]
EpochMillis = Annotated[
    int,
    BeforeValidator(_parse_ts),
    Field(ge=MIN_TS_MS, lt=MAX_TS_MS),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": MIN_TS_MS, "exclusiveMaximum": MAX_TS_MS},
                {"type": "string", "format": "date-time", "pattern": r"(Z|[+-]\d{2}:\d{2})$"},
            ],
            "description": "Event time: RFC 3339 with an offset, or integer epoch milliseconds",
        }
    ),
]
Amount = Annotated[
    Decimal,
    BeforeValidator(_parse_amount),
    Field(ge=0, max_digits=18, decimal_places=6),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^[0-9]{1,12}(\.[0-9]{1,6})?$"},
            ],
            "description": "Decimal amount >= 0, as a JSON number or a decimal string",
        }
    ),
]


class EventBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    event_id: Id
    user_id: Id
    ts: EpochMillis
    channel: Channel
    session_id: Id | None = None
    campaign_id: Id | None = None
    content_id: Id | None = None
    tz: Timezone | None = Field(
        default=None, description="The user's IANA timezone, for quiet hours (e.g. Asia/Shanghai)"
    )
    props: dict[PropKey, PropValue] = Field(default_factory=dict, max_length=MAX_PROPS)


class ClickEvent(EventBase):
    """A visit to a page through a link."""

    kind: Literal["click"]
    link_id: Id
    url: Url
    page: Page
    ref_share_id: Id | None = None
    landing_status: Annotated[int, Field(ge=100, le=599)] | None = Field(
        default=None, description="HTTP-like status of the landing; >= 400 means a dead end"
    )


class ShareEvent(EventBase):
    """A user sharing content or a link."""

    kind: Literal["share"]
    share_id: Id
    target: ShareTarget
    link_id: Id | None = None
    group_id: Id | None = None


class PurchaseEvent(EventBase):
    """A completed order."""

    kind: Literal["purchase"]
    order_id: Id
    amount: Amount
    currency: Currency
    ref_share_id: Id | None = None


class GroupChatEvent(EventBase):
    """Activity in a brand community (group chat)."""

    kind: Literal["group_chat"]
    group_id: Id
    action: GroupAction


Event = Annotated[
    ClickEvent | ShareEvent | PurchaseEvent | GroupChatEvent,
    Field(discriminator="kind"),
]
EVENT_MODELS: Final[dict[str, type[EventBase]]] = {
    "click": ClickEvent,
    "share": ShareEvent,
    "purchase": PurchaseEvent,
    "group_chat": GroupChatEvent,
}

# Field names a journey `match` may name, per kind (top level; `props.NAME` is always allowed).
MATCHABLE_FIELDS: Final[dict[str, frozenset[str]]] = {
    kind: frozenset(name for name in model.model_fields if name != "props")
    for kind, model in EVENT_MODELS.items()
}


def is_dead_end(event: Event) -> bool:
    """A click whose landing failed: the hop technically broke."""
    return (
        isinstance(event, ClickEvent)
        and event.landing_status is not None
        and event.landing_status >= 400
    )


def parse_ts(rfc3339: str) -> int:
    """The inverse of `format_ts`: an output's RFC 3339 time back to epoch ms."""
    return int(datetime.fromisoformat(rfc3339).timestamp() * 1000)


# Below 2^33 s the float `ms / 1000` is within half a microsecond of the exact time, so the
# datetime path renders exactly `ms`: there the fast path below gives the same text.
_EXACT_TS_LIMIT_MS: Final = (1 << 33) * 1000
_DAY_MS: Final = 86_400_000


# Zero-padded numbers, looked up rather than formatted (a format spec is parsed per call).
_TWO_DIGITS: Final = tuple(f"{n:02d}" for n in range(60))
_THREE_DIGITS: Final = tuple(f"{n:03d}" for n in range(1000))


@lru_cache(maxsize=256)
def _day_prefix(day: int) -> str:
    """The "YYYY-MM-DDT" of an epoch day number (outputs cluster on few days: cached)."""
    return datetime.fromtimestamp(day * 86_400, tz=UTC).date().isoformat() + "T"


def format_ts(ms: int) -> str:
    """Epoch ms → RFC 3339 UTC with milliseconds (the form every output uses)."""
    if type(ms) is int and 0 <= ms < _EXACT_TS_LIMIT_MS:
        # The hot path (every trigger and record has several): integer arithmetic, not a
        # datetime built and formatted per call.
        day, rest = divmod(ms, _DAY_MS)
        seconds, milli = divmod(rest, 1000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        two = _TWO_DIGITS
        return f"{_day_prefix(day)}{two[hour]}:{two[minute]}:{two[second]}.{_THREE_DIGITS[milli]}Z"
    return (
        datetime.fromtimestamp(ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
