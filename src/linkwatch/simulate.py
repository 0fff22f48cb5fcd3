"""Deterministic synthetic LinkWatch traffic, for demos, benchmarks and tests.

Real data has no shares, group chats, dead ends or bad records, and it never drops off at a
chosen step. This generator walks simulated users through the default journeys, so every step of
every journey sees conversions, drop-offs (every cause) and late returns, next to share fission,
group-chat activity, dead-end links, re-sent duplicates and malformed records.

One `random.Random(seed)` drives everything and no clock is read, so the same arguments always
give the same bytes. `time_scale` compresses every simulated duration (the live demo runs an hour
of behaviour in a minute, against journeys whose budgets are scaled the same way); it changes no
random draw, so a scaled run is the same story told faster.
"""

from __future__ import annotations

import gzip
import random
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from io import BufferedIOBase
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson

from linkwatch.events import MAX_TS_MS, MIN_TS_MS
from linkwatch.journeys import JourneySet, load_journeys

Record = dict[str, Any]

SECOND: Final = 1_000
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE

# Where a visitor shops after the first click: an article link opens the web shop, a group-chat
# or moments link opens the mini-program, and so on.
SHOP_CHANNEL: Final = {
    "article": "web",
    "ad": "web",
    "search": "web",
    "web": "web",
    "app": "app",
    "mini_program": "mini_program",
    "group_chat": "mini_program",
    "moments": "mini_program",
    "offline_store": "offline_store",
}
CAMPAIGNS: Final = ("cp-spring-sale", "cp-new-arrivals", "cp-koc-fission", "cp-community-week")
# Group sizes are uneven on purpose: the last group is nearly silent.
GROUP_WEIGHTS: Final = {"g01": 30, "g02": 25, "g03": 20, "g04": 13, "g05": 9, "g06": 3}
PRICE_POINTS_CENTS: Final = (3_900, 5_990, 8_900, 12_900, 19_900, 29_900, 45_900, 89_900)
PRODUCT_COUNT: Final = 40
CONTENT_COUNT: Final = 24
SEARCH_TERMS: Final = ("serum", "sunscreen", "tea+set", "running+shoes", "gift+box", "coffee")

ARRIVAL_WINDOW_MS: Final = 3 * HOUR
SESSION_GAP_MS: Final = 30 * MINUTE  # a return after this long starts a new session
PATIENCE_MS: Final = 45 * MINUTE  # gap scale for a stage no journey puts a budget on
MAX_IN_BUDGET_GAP_MS: Final = 2 * HOUR  # even a 1-day budget is mostly used within hours
LATE_RETURN_MAX_BUDGET_MS: Final = 2 * HOUR  # users come back late only after short budgets
LATE_RETURN_RATE: Final = 0.12
DEAD_END_RATE: Final = 0.015
DEAD_END_RETRY_RATE: Final = 0.6
DEAD_END_STATUSES: Final = (404, 404, 404, 410, 500, 502, 503)
NO_LANDING_STATUS_RATE: Final = 0.3  # landing_status is optional; not every producer sends it
DETAIL_PAGE_RATE: Final = 0.15
STRING_TS_RATE: Final = 0.1  # share of events whose ts is RFC 3339 (+08:00) instead of epoch ms
NUMERIC_AMOUNT_RATE: Final = 0.2  # share of purchases whose amount is a JSON number
DUPLICATE_RATE: Final = 0.005
SHARE_AFTER_PURCHASE_RATE: Final = 0.3
SHARE_AFTER_PRODUCT_RATE: Final = 0.05
GROUP_CLICK_RATE: Final = 0.3  # chance a group member clicks a link another member posted
# Attention is finite: a member clicks a few group links at most and posts at most one, so a
# busy group cannot set off an endless chain of posts, clicks and purchases.
GROUP_CLICKS_PER_MEMBER: Final = 2
KOC_RATE: Final = 0.25  # chance a group member posts a product link in the group
GROUP_LEAVE_RATE: Final = 0.2
FRIENDS_PER_SHARE: Final = {0: 35, 1: 30, 2: 20, 3: 10, 4: 5}
CHAT_ACTIONS: Final = {"message": 80, "mention": 12, "red_packet": 8}
# The contract's latest usable start: leaves room for the longest fission chains.
MAX_START_MS: Final = MAX_TS_MS - 30 * 24 * HOUR
MIN_TIME_SCALE: Final = 1e-6
CHINA_TIME: Final = timezone(timedelta(hours=8))
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

ROLE_WEIGHTS: Final = {"reader": 34, "shopper": 26, "member": 20, "friend": 15, "store": 5}
ENTRY_CHANNELS: Final = {
    "reader": {"article": 35, "moments": 15, "app": 15, "mini_program": 15, "ad": 12, "web": 8},
    "shopper": {"search": 45, "ad": 20, "web": 20, "app": 15},
}

C2P: Final = "content_to_purchase"
CART: Final = "cart_to_purchase"
SHARE: Final = "share_click_to_purchase"
GROUP: Final = "group_link_to_purchase"


class Stage(NamedTuple):
    """One hop of a simulated visit: a page clicked, or the purchase."""

    action: str
    drop: float  # chance the user gives up before this hop
    reaches: tuple[tuple[str, str], ...] = ()  # (journey, step) pairs this hop reaches


_PRODUCT = Stage("product", 0.35, ((C2P, "product"), (SHARE, "product")))
_TO_PURCHASE = (
    Stage("cart", 0.45, ((C2P, "cart"), (CART, "cart"), (GROUP, "cart"))),
    Stage("checkout", 0.3, ((C2P, "checkout"), (CART, "checkout"))),
    Stage(
        "purchase",
        0.3,
        ((C2P, "purchase"), (CART, "purchase"), (SHARE, "purchase"), (GROUP, "purchase")),
    ),
)
READER_FLOW: Final = (Stage("content", 0.0, ((C2P, "content"),)), _PRODUCT, *_TO_PURCHASE)
SHOPPER_FLOW: Final = (Stage("search", 0.0), _PRODUCT._replace(drop=0.3), *_TO_PURCHASE)
SHARED_CONTENT_FLOW: Final = (
    Stage("content", 0.0, ((SHARE, "share_click"), (C2P, "content"))),
    _PRODUCT._replace(drop=0.4),
    *_TO_PURCHASE,
)
SHARED_LINK_FLOW: Final = (
    Stage("landing", 0.0, ((SHARE, "share_click"),)),
    _PRODUCT._replace(drop=0.4),
    *_TO_PURCHASE,
)
GROUP_LINK_FLOW: Final = (
    Stage("landing", 0.0, ((SHARE, "share_click"), (GROUP, "group_click"))),
    _PRODUCT._replace(drop=0.3),
    *_TO_PURCHASE,
)
STORE_QR_FLOW: Final = (
    Stage("landing", 0.0),
    _PRODUCT._replace(drop=0.3),
    _TO_PURCHASE[-1]._replace(drop=0.4),
)
STORE_TILL_FLOW: Final = (Stage("purchase", 0.0),)


@dataclass(frozen=True, slots=True)
class Visit:
    """Who is visiting, what about, and where they came from."""

    user_id: str
    entry_channel: str
    product_id: str
    campaign_id: str | None = None
    content_id: str | None = None
    ref_share_id: str | None = None
    entry_link: tuple[str, str] | None = None  # (link_id, url) a share or QR code pointed at


@dataclass(frozen=True, slots=True)
class Member:
    user_id: str
    group_id: str
    joined_at: int
    left_at: int | None

    def present_at(self, ts: int) -> bool:
        return self.joined_at < ts and (self.left_at is None or ts < self.left_at)


def _visit_context(visit: Visit, session: str) -> Record:
    return {
        "session_id": session,
        "campaign_id": visit.campaign_id,
        "content_id": visit.content_id,
    }


class PendingVisit(NamedTuple):
    visit: Visit
    flow: tuple[Stage, ...]
    start: int


class _Simulation:
    """Builds the event list. Each method draws from the one rng, in a fixed order."""

    def __init__(
        self,
        seed: int,
        users: int,
        start_ms: int,
        *,
        time_scale: float,
        journeys: JourneySet,
        user_prefix: str,
    ) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible test traffic, not security
        self.seed = seed
        self.start_ms = start_ms
        self.time_scale = time_scale
        self.events: list[tuple[int, Record]] = []
        self.event_count = 0
        self.share_count = 0
        self.order_count = 0
        self.queue: deque[PendingVisit] = deque()
        self.step_index = {
            (j.name, step.name): index
            for j in journeys.journeys
            for index, step in enumerate(j.steps)
        }
        self.budgets = {
            j.name: tuple(step.within_ms for step in j.steps) for j in journeys.journeys
        }
        rng = self.rng
        self.prices = {f"p{1001 + n}": rng.choice(PRICE_POINTS_CENTS) for n in range(PRODUCT_COUNT)}
        self.products = list(self.prices)
        # A few products sell most: popularity falls off with rank.
        self.popularity = [1 / (rank + 1) for rank in range(PRODUCT_COUNT)]
        self.content_product = {
            f"ct{n + 1:03d}": self._pick_product() for n in range(CONTENT_COUNT)
        }
        self.user_ids = [f"{user_prefix}{n + 1:04d}" for n in range(users)]
        self.roles = rng.choices(list(ROLE_WEIGHTS), list(ROLE_WEIGHTS.values()), k=users)
        self.friends: deque[str] = deque(
            user for user, role in zip(self.user_ids, self.roles, strict=True) if role == "friend"
        )
        self.members: dict[str, list[Member]] = {group: [] for group in GROUP_WEIGHTS}
        self.membership: dict[str, Member] = {}
        self.group_clicks: Counter[str] = Counter()  # user → group links clicked
        self.posted: set[str] = set()  # users who have posted a link in their group

    # -- the whole run -------------------------------------------------------------------------

    def run(self) -> None:
        arrivals = sorted(
            (self.start_ms + self.rng.randrange(self._ms(ARRIVAL_WINDOW_MS)), user, role)
            for user, role in zip(self.user_ids, self.roles, strict=True)
            if role != "friend"
        )
        posts: list[tuple[Member, int]] = []
        for arrived, user, role in arrivals:
            if role == "member":
                posts.extend(self._join_group(user, arrived))
            elif role == "store":
                self.queue.append(self._store_visit(user, arrived))
            else:
                self.queue.append(self._organic_visit(user, role, arrived))
        for member, ts in posts:
            self._post_in_group(member, ts, self._pick_product())
        self._drain()
        # Friends nobody's share reached arrive on their own, like any shopper.
        while self.friends:
            user = self.friends.popleft()
            arrived = self.start_ms + self.rng.randrange(self._ms(ARRIVAL_WINDOW_MS))
            self.queue.append(self._organic_visit(user, "shopper", arrived))
            self._drain()

    def _drain(self) -> None:
        while self.queue:
            self._walk(*self.queue.popleft())

    def _organic_visit(self, user: str, role: str, arrived: int) -> PendingVisit:
        channels = ENTRY_CHANNELS[role]
        channel = self.rng.choices(list(channels), list(channels.values()))[0]
        campaign = (
            self.rng.choice(CAMPAIGNS[:2]) if channel in ("ad", "article", "moments") else None
        )
        if role == "reader":
            content = self.rng.choice(list(self.content_product))
            visit = Visit(user, channel, self.content_product[content], campaign, content)
            return PendingVisit(visit, READER_FLOW, arrived)
        return PendingVisit(
            Visit(user, channel, self._pick_product(), campaign), SHOPPER_FLOW, arrived
        )

    def _store_visit(self, user: str, arrived: int) -> PendingVisit:
        store = f"store-{self.rng.randint(1, 5)}"
        qr_link = (f"lk-qr-{store}", f"https://shop.example/qr/{store}")
        visit = Visit(user, "offline_store", self._pick_product(), entry_link=qr_link)
        flow = STORE_QR_FLOW if self.rng.random() < 0.7 else STORE_TILL_FLOW
        return PendingVisit(visit, flow, arrived)

    # -- walking a flow ------------------------------------------------------------------------

    def _walk(self, visit: Visit, flow: tuple[Stage, ...], start: int) -> None:
        """Walk the stages until the user drops, a dead end stops them, or they buy."""
        open_journeys: dict[str, tuple[int, int]] = {}  # journey → (step reached, when)
        session = self._new_session()
        now = start
        reached = -1
        for position, stage in enumerate(flow):
            if position:
                if self.rng.random() < stage.drop:
                    break
                previous = now
                now += self._gap(self._remaining(open_journeys, stage, now))
                if now - previous > self._ms(SESSION_GAP_MS):
                    session = self._new_session()
                for journey in [j for j in open_journeys if self._deadline(j, open_journeys) < now]:
                    del open_journeys[journey]
            arrived = self._perform(visit, stage.action, now, session, first=position == 0)
            if arrived is None:
                break
            now = arrived
            reached = position
            self._reach(open_journeys, stage, now)
        bought = reached >= 0 and flow[reached].action == "purchase"
        viewed = any(stage.action == "product" for stage in flow[: reached + 1])
        share_rate = (
            SHARE_AFTER_PURCHASE_RATE if bought else SHARE_AFTER_PRODUCT_RATE if viewed else 0.0
        )
        if self.rng.random() < share_rate:
            self._share(visit, now + self.rng.randint(self._ms(MINUTE), self._ms(20 * MINUTE)))

    def _deadline(self, journey: str, open_journeys: dict[str, tuple[int, int]]) -> int:
        step, when = open_journeys[journey]
        return when + self.budgets[journey][step + 1]

    def _remaining(
        self, open_journeys: dict[str, tuple[int, int]], stage: Stage, now: int
    ) -> int | None:
        """Time left before the earliest journey this stage would advance gives up, if any."""
        deadlines = [
            self._deadline(journey, open_journeys)
            for journey, step in stage.reaches
            if journey in open_journeys
            and self.step_index.get((journey, step), 0) > open_journeys[journey][0]
        ]
        return min(deadlines) - now if deadlines else None

    def _reach(self, open_journeys: dict[str, tuple[int, int]], stage: Stage, now: int) -> None:
        for journey, step in stage.reaches:
            index = self.step_index.get((journey, step))
            if index is None:  # a journeys file without this step: nothing to track
                continue
            if index == 0:
                open_journeys.setdefault(journey, (0, now))
            elif journey in open_journeys and index > open_journeys[journey][0]:
                if index == len(self.budgets[journey]) - 1:
                    del open_journeys[journey]  # converted
                else:
                    open_journeys[journey] = (index, now)

    def _gap(self, remaining: int | None) -> int:
        """How long until the next hop: mostly within the budget, sometimes just past it."""
        rng = self.rng
        if remaining is None:
            return rng.randint(self._ms(5 * SECOND), self._ms(PATIENCE_MS))
        if remaining <= self._ms(LATE_RETURN_MAX_BUDGET_MS) and rng.random() < LATE_RETURN_RATE:
            return remaining + rng.randint(self._ms(MINUTE), self._ms(40 * MINUTE))
        # Skewed towards quick hops: most people continue soon or not at all.
        longest = min(remaining, self._ms(MAX_IN_BUDGET_GAP_MS))
        return int(longest * (0.01 + 0.94 * rng.random() ** 2))

    def _ms(self, duration: float) -> int:
        """A simulated duration on the run's time scale (exact when the scale is 1)."""
        return int(duration * self.time_scale)

    def _perform(
        self, visit: Visit, action: str, ts: int, session: str, *, first: bool
    ) -> int | None:
        """Emit the hop; returns when it succeeded, or None if a dead end made the user quit."""
        if action == "purchase":
            self._purchase(visit, ts, session)
            return ts
        fields = self._click_fields(visit, action, first=first)
        channel = visit.entry_channel if first else SHOP_CHANNEL[visit.entry_channel]
        context = _visit_context(visit, session)
        if self.rng.random() < DEAD_END_RATE:
            status = self.rng.choice(DEAD_END_STATUSES)
            self._emit(
                "click", visit.user_id, ts, channel, **context, landing_status=status, **fields
            )
            if self.rng.random() >= DEAD_END_RETRY_RATE:
                return None
            ts += self.rng.randint(self._ms(3 * SECOND), self._ms(40 * SECOND))
        status_ok = None if self.rng.random() < NO_LANDING_STATUS_RATE else 200
        self._emit(
            "click", visit.user_id, ts, channel, **context, landing_status=status_ok, **fields
        )
        return ts

    def _click_fields(self, visit: Visit, action: str, *, first: bool) -> Record:
        product = visit.product_id
        if action == "content":
            content = visit.content_id
            link, url = f"lk-{content}", f"https://shop.example/c/{content}"
        elif action == "search":
            term = self.rng.choice(SEARCH_TERMS)
            return {
                "page": "search",
                "link_id": "lk-search",
                "url": f"https://shop.example/search?q={term}",
                "props": {"query": term.replace("+", " ")},
            }
        elif action == "landing":
            link, url = visit.entry_link or (
                f"lk-lp-{product}",
                f"https://shop.example/lp/{product}",
            )
        elif action == "product":
            page = "detail" if self.rng.random() < DETAIL_PAGE_RATE else "product"
            return {
                "page": page,
                "link_id": f"lk-{product}",
                "url": f"https://shop.example/p/{product}",
                "props": {"product_id": product},
            }
        else:  # cart, checkout
            link, url = f"lk-{action}", f"https://shop.example/{action}"
        return {
            "page": action,
            "link_id": link,
            "url": url,
            "ref_share_id": visit.ref_share_id if first else None,
            "props": {"product_id": product},
        }

    def _purchase(self, visit: Visit, ts: int, session: str) -> None:
        self.order_count += 1
        quantity = self.rng.choices((1, 2, 3), (80, 15, 5))[0]
        cents = self.prices[visit.product_id] * quantity
        amount: str | int | float = f"{cents // 100}.{cents % 100:02d}"
        if self.rng.random() < NUMERIC_AMOUNT_RATE:
            amount = cents // 100 if cents % 100 == 0 else cents / 100
        self._emit(
            "purchase",
            visit.user_id,
            ts,
            SHOP_CHANNEL[visit.entry_channel],
            **_visit_context(visit, session),
            order_id=f"o{self.seed}-{self.order_count}",
            amount=amount,
            currency="CNY",
            ref_share_id=visit.ref_share_id,
            props={"product_id": visit.product_id, "qty": quantity},
        )

    # -- sharing and fission -------------------------------------------------------------------

    def _share(self, visit: Visit, ts: int) -> None:
        member = self.membership.get(visit.user_id)
        if member is not None and member.present_at(ts) and member.user_id not in self.posted:
            self._post_in_group(member, ts, visit.product_id, visit.content_id)
            return
        target = "moments" if self.rng.random() < 0.6 else "direct"
        share_id = self._emit_share(
            visit.user_id,
            ts,
            channel=SHOP_CHANNEL[visit.entry_channel],
            target=target,
            product=visit.product_id,
            content=visit.content_id,
        )
        friends = self.rng.choices(list(FRIENDS_PER_SHARE), list(FRIENDS_PER_SHARE.values()))[0]
        for _ in range(min(friends, len(self.friends))):
            friend = Visit(
                self.friends.popleft(),
                "moments" if target == "moments" else "mini_program",
                visit.product_id,
                CAMPAIGNS[2],
                visit.content_id,
                share_id,
                self._share_link(visit.product_id, share_id),
            )
            flow = SHARED_CONTENT_FLOW if visit.content_id else SHARED_LINK_FLOW
            self.queue.append(PendingVisit(friend, flow, ts + self._reaction_delay()))

    def _post_in_group(
        self, member: Member, ts: int, product: str, content: str | None = None
    ) -> None:
        """A member posts a link in their group; members present may click it."""
        group = member.group_id
        self.posted.add(member.user_id)
        self._emit_chat(member.user_id, ts, group, "link_share")
        share_id = self._emit_share(
            member.user_id,
            ts,
            channel="group_chat",
            target="group_chat",
            product=product,
            content=content,
            group=group,
        )
        for other in self.members[group]:
            if other is member or not other.present_at(ts):
                continue
            if self.group_clicks[other.user_id] >= GROUP_CLICKS_PER_MEMBER:
                continue
            if self.rng.random() < GROUP_CLICK_RATE:
                self.group_clicks[other.user_id] += 1
                link = self._share_link(product, share_id)
                visit = Visit(
                    other.user_id, "group_chat", product, CAMPAIGNS[3], content, share_id, link
                )
                self.queue.append(PendingVisit(visit, GROUP_LINK_FLOW, ts + self._reaction_delay()))

    def _emit_share(
        self,
        user: str,
        ts: int,
        *,
        channel: str,
        target: str,
        product: str,
        content: str | None,
        group: str | None = None,
    ) -> str:
        self.share_count += 1
        share_id = f"s{self.seed}-{self.share_count}"
        self._emit(
            "share",
            user,
            ts,
            channel,
            campaign_id=CAMPAIGNS[2],
            content_id=content,
            share_id=share_id,
            target=target,
            link_id=f"lk-{product}",
            group_id=group,
        )
        return share_id

    @staticmethod
    def _share_link(product: str, share_id: str) -> tuple[str, str]:
        """A share lands on a tracked share page for the product."""
        return f"lk-{product}", f"https://shop.example/s/{share_id}"

    def _reaction_delay(self) -> int:
        """How long after a share a friend clicks it: minutes usually, hours sometimes."""
        return self._ms(MINUTE + 2 * HOUR * self.rng.random() ** 3)

    # -- group chats ---------------------------------------------------------------------------

    def _join_group(self, user: str, joined_at: int) -> list[tuple[Member, int]]:
        """Join a group, chat a little, maybe leave; returns the link posts to make later
        (once every member has joined, so the posts can find their audience)."""
        rng = self.rng
        group = rng.choices(list(GROUP_WEIGHTS), list(GROUP_WEIGHTS.values()))[0]
        left_at = (
            joined_at + rng.randint(self._ms(10 * MINUTE), self._ms(5 * HOUR))
            if rng.random() < GROUP_LEAVE_RATE
            else None
        )
        member = Member(user, group, joined_at, left_at)
        self.members[group].append(member)
        self.membership[user] = member
        self._emit_chat(user, joined_at, group, "join")
        active_until = min(
            left_at or joined_at + self._ms(4 * HOUR), joined_at + self._ms(4 * HOUR)
        )
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3, 5, 8))):
            action = rng.choices(list(CHAT_ACTIONS), list(CHAT_ACTIONS.values()))[0]
            self._emit_chat(user, rng.randint(joined_at + 1, active_until - 1), group, action)
        if left_at is not None:
            self._emit_chat(user, left_at, group, "leave")
        if rng.random() < KOC_RATE:
            return [(member, rng.randint(joined_at + self._ms(5 * MINUTE), active_until - 1))]
        return []

    def _emit_chat(self, user: str, ts: int, group: str, action: str) -> None:
        props: Record = {}
        if action == "message":
            props = {"chars": self.rng.randint(2, 120)}
        elif action == "red_packet":
            props = {"packet_amount": self.rng.choice(("1.88", "6.66", "8.88", "16.80"))}
        self._emit(
            "group_chat",
            user,
            ts,
            "group_chat",
            campaign_id=CAMPAIGNS[3],
            group_id=group,
            action=action,
            props=props or None,
        )

    # -- records -------------------------------------------------------------------------------

    def _emit(self, kind: str, user_id: str, ts: int, channel: str, **fields: Any) -> None:
        """Record one event; fields that are None are left out."""
        self.event_count += 1
        record: Record = {
            "event_id": f"e{self.seed}-{self.event_count}",
            "kind": kind,
            "user_id": user_id,
            "ts": self._ts_value(ts),
            "channel": channel,
            **fields,
        }
        self.events.append((ts, {key: value for key, value in record.items() if value is not None}))

    def _ts_value(self, ts: int) -> int | str:
        """Most producers send epoch ms; some send RFC 3339 in China time."""
        if self.rng.random() < STRING_TS_RATE:
            local = (EPOCH + timedelta(milliseconds=ts)).astimezone(CHINA_TIME)
            return local.isoformat(timespec="milliseconds")
        return ts

    def _new_session(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _pick_product(self) -> str:
        return self.rng.choices(self.products, self.popularity)[0]


# -- bad records ---------------------------------------------------------------------------------

REQUIRED_FIELDS: Final = {
    "click": ("event_id", "user_id", "ts", "channel", "kind", "link_id", "url", "page"),
    "share": ("event_id", "user_id", "ts", "channel", "kind", "share_id", "target"),
    "purchase": ("event_id", "user_id", "ts", "channel", "kind", "order_id", "amount", "currency"),
    "group_chat": ("event_id", "user_id", "ts", "channel", "kind", "group_id", "action"),
}
UNKNOWN_KINDS: Final = ("view", "refund", "pageview", "Click", "order")
INVALID_UTF8: Final = (b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80")
CORRUPTIONS: Final = (
    "truncated",
    "invalid_utf8",
    "missing_field",
    "wrong_type",
    "unknown_kind",
    "negative_amount",
    "not_an_object",
    "ts_without_offset",
    "ts_in_seconds",
    "bad_channel",
)


def _corrupt(rng: random.Random, how: str, ts: int, record: Record) -> bytes:
    """A record that `decode_event` must reject, made from a valid one (never with a newline)."""
    bad = dict(record)
    if how == "truncated":
        raw = orjson.dumps(bad)
        return raw[: rng.randrange(1, len(raw))]
    if how == "invalid_utf8":
        junk = rng.choice(INVALID_UTF8)
        return orjson.dumps(bad).replace(b'"user_id":"', b'"user_id":"' + junk, 1)
    if how == "missing_field":
        del bad[rng.choice(REQUIRED_FIELDS[bad["kind"]])]
    elif how == "wrong_type":
        wrong: list[tuple[str, Any]] = [
            ("ts", True),
            ("user_id", 12345),
            ("props", ["a"]),
            ("channel", 7),
        ]
        if bad["kind"] == "purchase":
            wrong += [("amount", {"value": bad["amount"]}), ("amount", True)]
        field, value = rng.choice(wrong)
        bad[field] = value
    elif how == "unknown_kind":
        bad["kind"] = rng.choice(UNKNOWN_KINDS)
    elif how == "negative_amount":  # `record` is a purchase for this one
        bad["amount"] = rng.choice(("-129.00", "-0.01", -59.9, -1))
    elif how == "not_an_object":
        return orjson.dumps(rng.choice(([bad], 42, "click", None, [])))
    elif how == "ts_without_offset":
        bad["ts"] = (EPOCH + timedelta(milliseconds=ts)).strftime("%Y-%m-%dT%H:%M:%S")
    elif how == "ts_in_seconds":
        bad["ts"] = ts // 1000
    else:  # bad_channel: channels become metric labels, so free text is refused
        bad["channel"] = rng.choice(("Group Chat", "WeChat-Moments", "", "APP"))
    return orjson.dumps(bad)


# -- public API ----------------------------------------------------------------------------------


def generate(
    *,
    seed: int = 7,
    users: int = 500,
    start_ms: int,
    bad_ratio: float = 0.01,
    disorder_ms: int = 2000,
    time_scale: float = 1.0,
    journeys: JourneySet | None = None,
    user_prefix: str = "u",
) -> Iterator[bytes]:
    """Simulated traffic of `users` people arriving over 3 hours times `time_scale` from
    `start_ms` (event time), walking `journeys` (default: the built-in ones) within their
    budgets or not.

    Returns JSON records (no trailing newline) in event-time order, each at most `disorder_ms`
    of event time behind the newest before it. `bad_ratio` of them are malformed; about 0.5% of
    the valid ones are re-sent exact duplicates. User ids are `user_prefix` and a number, so
    populations that overlap in time can be told apart. Arguments are checked at once; records
    are produced when first asked for."""
    if users < 0:
        raise ValueError(f"users must be >= 0, not {users}")
    if not 0 <= bad_ratio < 1:
        raise ValueError(f"bad_ratio must be in [0, 1), not {bad_ratio}")
    if disorder_ms < 0:
        raise ValueError(f"disorder_ms must be >= 0, not {disorder_ms}")
    if not MIN_TS_MS <= start_ms <= MAX_START_MS:
        raise ValueError(f"start_ms {start_ms} is outside [{MIN_TS_MS}, {MAX_START_MS}]")
    # Below a millionth, a simulated hour is a few ms and bounded draws become empty ranges.
    if not MIN_TIME_SCALE <= time_scale <= 1:
        raise ValueError(f"time_scale must be in [{MIN_TIME_SCALE:g}, 1], not {time_scale}")
    simulation = _Simulation(
        seed,
        users,
        start_ms,
        time_scale=time_scale,
        journeys=journeys if journeys is not None else load_journeys(),
        user_prefix=user_prefix,
    )
    return _records(simulation, bad_ratio, disorder_ms)


def _records(simulation: _Simulation, bad_ratio: float, disorder_ms: int) -> Iterator[bytes]:
    simulation.run()
    rng = simulation.rng
    events = simulation.events
    # Sorting by event time plus a bounded jitter is what keeps disorder within disorder_ms.
    lines: list[tuple[int, bytes]] = []
    for ts, record in events:
        raw = orjson.dumps(record)
        lines.append((ts + rng.randint(0, disorder_ms), raw))
        if rng.random() < DUPLICATE_RATE:
            lines.append((ts + rng.randint(0, disorder_ms), raw))
    purchases = [event for event in events if event[1]["kind"] == "purchase"]
    corruptions = (
        CORRUPTIONS if purchases else tuple(c for c in CORRUPTIONS if c != "negative_amount")
    )
    bad_count = round(len(lines) * bad_ratio / (1 - bad_ratio)) if events else 0
    # Every corruption in turn, shuffled: even a few bad records show the whole variety.
    hows = [corruptions[n % len(corruptions)] for n in range(bad_count)]
    rng.shuffle(hows)
    for how in hows:
        ts, record = rng.choice(purchases if how == "negative_amount" else events)
        lines.append((ts + rng.randint(0, disorder_ms), _corrupt(rng, how, ts, record)))
    lines.sort(key=lambda line: line[0])
    for _, raw in lines:
        yield raw


def write_jsonl(path: Path, records: Iterable[bytes]) -> int:
    """Write one record per line (gzip when the name ends in .gz, byte-reproducible: no
    timestamp or file name in the header). Returns how many records were written."""
    count = 0
    with ExitStack() as stack:
        out: BufferedIOBase = stack.enter_context(path.open("wb"))
        if path.name.endswith(".gz"):
            out = stack.enter_context(gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0))
        for record in records:
            if b"\n" in record:
                raise ValueError(
                    f"record {count + 1} contains a newline; JSON Lines cannot hold it"
                )
            out.write(record + b"\n")
            count += 1
    return count
