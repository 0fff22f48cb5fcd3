"""Deterministic synthetic LinkWatch traffic, for demos, benchmarks and tests.

Real data has no shares, group chats, dead ends or bad records, and it never drops off at a
chosen step. This generator walks simulated users through the default journeys, so every step of
every journey sees conversions, drop-offs (every cause) and late returns, next to share fission,
group-chat activity, dead-end links, re-sent duplicates and malformed records.

On top of that, each capability downstream has a story in the traffic (see `Features`, all on by
default, each in its own method): shares that cascade several hops deep, a campaign landing page
that breaks for an hour and is fixed, group life in which one launch group dies, a
click bot, public-channel visitors who later join a group (or follow the official account), and
users whose events carry their timezone. Users arrive over the first 3 hours; groups keep
talking and the bot keeps clicking for 56 hours of event time, long enough for a 24-hour window
to see a group fall silent.

One `random.Random(seed)` drives everything and no clock is read, so the same arguments always
give the same bytes. `time_scale` compresses every simulated duration (the live demo runs an hour
of behaviour in a minute, against journeys whose budgets are scaled the same way); it changes no
random draw, so a scaled run is the same story told faster.
"""

from __future__ import annotations

import gzip
import heapq
import random
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from io import BufferedIOBase
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple

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
# Groups talk and bots click this long: a 24h window sees a group fall silent, and the journeys'
# last deadlines (a day after the last hops), with any quiet hours holding their triggers, have
# passed before the run ends, so a replay of it holds nothing back at the end.
SPAN_MS: Final = 56 * HOUR
SESSION_GAP_MS: Final = 30 * MINUTE  # a return after this long starts a new session
PATIENCE_MS: Final = 45 * MINUTE  # gap scale for a stage no journey puts a budget on
MAX_IN_BUDGET_GAP_MS: Final = 2 * HOUR  # even a 1-day budget is mostly used within hours
LATE_RETURN_MAX_BUDGET_MS: Final = 2 * HOUR  # users come back late only after short budgets
LATE_RETURN_RATE: Final = 0.12
DEAD_END_RATE: Final = 0.015
DEAD_END_RETRY_RATE: Final = 0.6
MAX_RETRIES: Final = 2  # a user tries a failing hop at most this many more times
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
GROUP_LEAVE_RATE: Final = 0.1  # members drift away at any time of the run
FRIENDS_PER_SHARE: Final = {0: 35, 1: 30, 2: 20, 3: 10, 4: 5}
CHAT_ACTIONS: Final = {"message": 80, "mention": 12, "red_packet": 8}
MEMBER_CHAT_EVERY_MS: Final = 8 * HOUR  # a member of a healthy group says something this often
GROUP_BUY_RATE: Final = 0.02  # chance a member buys in the mini-program soon after chatting

# Cascading shares: a new user a share brought in passes it on more readily than most, to a few
# friends, so chains run several hops deep (fission credit goes up to 3 hops by default).
RESHARE_AFTER_PURCHASE_RATE: Final = 0.8
RESHARE_AFTER_PRODUCT_RATE: Final = 0.45
RESHARE_FRIENDS: Final = {1: 35, 2: 35, 3: 20, 4: 10}

# The broken link: the spring-sale landing page fails for an hour in the middle of the arrivals,
# then is fixed. Enough visitors land there to trip [links] defaults (>= 20 clicks in 1h with
# >= 25% dead ends) even with the default 500 users.
BROKEN_LINK: Final = ("lk-broken-landing", "https://shop.example/lp/spring-sale")
BROKEN_LINK_CAMPAIGN: Final = CAMPAIGNS[0]
CAMPAIGN_LANDING_RATE: Final = 0.35  # share of readers and shoppers who arrive through it
CAMPAIGN_POST_RATE: Final = 0.4  # share of group members' own posts that link to it
OUTAGE_FROM_MS: Final = 1 * HOUR  # after start_ms
OUTAGE_UNTIL_MS: Final = 2 * HOUR
OUTAGE_STATUSES: Final = (404, 404, 502)

# The dying group: a launch group, lively for its first half day, then silent while most of its
# members leave (a 24h window with hourly buckets sees both).
DYING_GROUP_WEIGHT: Final = 20  # next to GROUP_WEIGHTS, for members picking a group
DYING_LIVELY_UNTIL_MS: Final = 12 * HOUR  # after start_ms: the last message
DYING_CHAT_EVERY_MS: Final = 1 * HOUR  # while lively, a member says something this often
DYING_LEAVE_RATE: Final = 0.8
DYING_LEAVES_MS: Final = (13 * HOUR, 30 * HOUR)  # after start_ms: when the leavers go

# Click bots: one per USERS_PER_BOT users (at most MAX_BOTS), nothing but bursts of landing-page
# clicks well under a second apart, again and again ([fake_traffic] defaults: >= 20 clicks in
# 1 minute, dwell under 2s).
USERS_PER_BOT: Final = 500
MAX_BOTS: Final = 2
BOT_BURST_CLICKS: Final = (21, 35)
BOT_CLICK_GAP_MS: Final = (150, 1200)
BOT_BURST_EVERY_MS: Final = (1 * HOUR, 4 * HOUR)
BOT_CAMPAIGN: Final = CAMPAIGNS[1]

# Retention: some public-channel visitors later join a group (most of them) or follow the
# official account (props.follow); most never do. Some who join are never heard from again.
RETAIN_RATE: Final = 0.2
RETAIN_AFTER_MS: Final = (30 * MINUTE, 36 * HOUR)  # after their visit
FOLLOW_RATE: Final = 0.25  # of the retained: follow instead of joining a group
LURKER_RATE: Final = 0.4  # of those who join: silent from then on (dormant, given time)
FOLLOW_LINK: Final = ("lk-follow-oa", "https://shop.example/follow")

# Timezones: the share of users whose events carry `tz` (quiet hours use it), and where they are.
TZ_RATE: Final = 0.3
TIMEZONES: Final = {
    "Asia/Shanghai": 55,
    "Asia/Singapore": 10,
    "Europe/Berlin": 15,
    "America/New_York": 20,
}
# The contract's latest usable start: leaves room for the longest fission chains.
MAX_START_MS: Final = MAX_TS_MS - 30 * 24 * HOUR
MIN_TIME_SCALE: Final = 1e-6
CHINA_TIME: Final = timezone(timedelta(hours=8))
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

ROLE_WEIGHTS: Final = {"reader": 31, "shopper": 24, "member": 20, "friend": 20, "store": 5}
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
CAMPAIGN_LANDING_FLOW: Final = (
    Stage("landing", 0.0),
    _PRODUCT._replace(drop=0.35),
    *_TO_PURCHASE,
)
STORE_QR_FLOW: Final = (
    Stage("landing", 0.0),
    _PRODUCT._replace(drop=0.3),
    _TO_PURCHASE[-1]._replace(drop=0.4),
)
STORE_TILL_FLOW: Final = (Stage("purchase", 0.0),)


@dataclass(frozen=True, slots=True)
class Features:
    """The stories a run tells on top of the journeys (all by default); off, each is absent."""

    cascades: bool = True  # new users brought by a share share again, hops deep
    broken_link: bool = True  # the spring-sale landing page, broken for an hour
    communities: bool = True  # group chat all run long, in which one launch group dies
    bots: bool = True  # click bursts from a user or two who do nothing else
    retention: bool = True  # public-channel visitors who later join a group or follow
    timezones: bool = True  # some users' events carry `tz`


ALL_FEATURES: Final = Features()
NO_FEATURES: Final = Features(False, False, False, False, False, False)

Origin = Literal["public", "share", "group", "store"]


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
    origin: Origin = "public"  # "share": a new user a friend's share brought in


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
        features: Features,
    ) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible test traffic, not security
        self.seed = seed
        self.start_ms = start_ms
        self.time_scale = time_scale
        self.features = features
        self.end_ms = start_ms + self._ms(SPAN_MS)
        self.outage = (start_ms + self._ms(OUTAGE_FROM_MS), start_ms + self._ms(OUTAGE_UNTIL_MS))
        self.events: list[tuple[int, Record]] = []
        self.event_count = 0
        self.share_count = 0
        self.order_count = 0
        # Visits are walked in order of their start, so a friend's visit (and the share it may
        # lead to) comes before later arrivals' and cascades get their share of the friends.
        self.queue: list[tuple[int, int, PendingVisit]] = []
        self.planned = 0
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
        if features.bots:
            self._cast_bots()
        self.timezones = self._assign_timezones() if features.timezones else {}
        self.friends: deque[str] = deque(
            user for user, role in zip(self.user_ids, self.roles, strict=True) if role == "friend"
        )
        # Each population has its own launch group, so overlapping demo populations each show one
        # dying (a shared id would be kept alive by the next population's joins).
        self.dying_group = f"g-launch-{seed}" if features.communities else None
        self.group_weights: dict[str, int] = dict(GROUP_WEIGHTS)
        if self.dying_group is not None:
            self.group_weights[self.dying_group] = DYING_GROUP_WEIGHT
        self.dying_silent_at = start_ms + self._ms(DYING_LIVELY_UNTIL_MS)
        self.members: dict[str, list[Member]] = {group: [] for group in self.group_weights}
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
                self._plan(self._store_visit(user, arrived))
            elif role == "bot":
                self._bot(user, arrived)
            else:
                self._plan(self._organic_visit(user, role, arrived))
        for member, ts in posts:
            to_landing = self.features.broken_link and self.rng.random() < CAMPAIGN_POST_RATE
            self._post_in_group(member, ts, self._pick_product(), to_landing=to_landing)
        self._drain()
        # Friends nobody's share reached arrive on their own, like any shopper.
        while self.friends:
            user = self.friends.popleft()
            arrived = self.start_ms + self.rng.randrange(self._ms(ARRIVAL_WINDOW_MS))
            self._plan(self._organic_visit(user, "shopper", arrived))
            self._drain()
        if self.features.communities:
            self._group_life()

    def _drain(self) -> None:
        while self.queue:
            self._walk(*heapq.heappop(self.queue)[2])

    def _plan(self, pending: PendingVisit) -> None:
        self.planned += 1
        heapq.heappush(self.queue, (pending.start, self.planned, pending))

    def _organic_visit(self, user: str, role: str, arrived: int) -> PendingVisit:
        channels = ENTRY_CHANNELS[role]
        channel = self.rng.choices(list(channels), list(channels.values()))[0]
        if self.features.broken_link and self.rng.random() < CAMPAIGN_LANDING_RATE:
            return self._campaign_landing_visit(user, channel, arrived)
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
        visit = Visit(
            user, "offline_store", self._pick_product(), entry_link=qr_link, origin="store"
        )
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
        if self.rng.random() < self._share_rate(visit, bought=bought, viewed=viewed):
            self._share(visit, now + self.rng.randint(self._ms(MINUTE), self._ms(20 * MINUTE)))
        if self.features.retention and visit.origin == "public":
            self._retain(visit.user_id, SHOP_CHANNEL[visit.entry_channel], now)

    def _share_rate(self, visit: Visit, *, bought: bool, viewed: bool) -> float:
        if self.features.cascades and visit.origin == "share":
            if bought:
                return RESHARE_AFTER_PURCHASE_RATE
            return RESHARE_AFTER_PRODUCT_RATE if viewed else 0.0
        return SHARE_AFTER_PURCHASE_RATE if bought else SHARE_AFTER_PRODUCT_RATE if viewed else 0.0

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
        failed = self._failed_landing(fields["link_id"], ts)
        retries = 0
        while failed is not None:
            self._emit(
                "click", visit.user_id, ts, channel, **context, landing_status=failed, **fields
            )
            if retries == MAX_RETRIES or self.rng.random() >= DEAD_END_RETRY_RATE:
                return None
            retries += 1
            ts += self.rng.randint(self._ms(3 * SECOND), self._ms(40 * SECOND))
            failed = self._failed_landing(fields["link_id"], ts)
        status_ok = None if self.rng.random() < NO_LANDING_STATUS_RATE else 200
        self._emit(
            "click", visit.user_id, ts, channel, **context, landing_status=status_ok, **fields
        )
        return ts

    def _failed_landing(self, link_id: str, ts: int) -> int | None:
        """The failing status of a click on `link_id` at `ts`, or None if it loads."""
        if self._link_is_down(link_id, ts):
            return self.rng.choice(OUTAGE_STATUSES)
        if self.rng.random() < DEAD_END_RATE:
            return self.rng.choice(DEAD_END_STATUSES)
        return None

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
        if (
            member is not None
            and member.present_at(ts)
            and member.user_id not in self.posted
            and self._group_is_alive(member.group_id, ts)
        ):
            self._post_in_group(member, ts, visit.product_id, visit.content_id)
            return
        target = "moments" if self.rng.random() < 0.6 else "direct"
        # A campaign landing page is shared as itself (its campaign goes with it); anything else
        # as the product's share page, in the fission campaign.
        on_landing = visit.entry_link is not None and visit.entry_link[0] == BROKEN_LINK[0]
        link = BROKEN_LINK[0] if on_landing else f"lk-{visit.product_id}"
        campaign = visit.campaign_id if on_landing else CAMPAIGNS[2]
        share_id = self._emit_share(
            visit.user_id,
            ts,
            channel=SHOP_CHANNEL[visit.entry_channel],
            target=target,
            link=link,
            content=visit.content_id,
        )
        reach = (
            RESHARE_FRIENDS
            if self.features.cascades and visit.origin == "share"
            else FRIENDS_PER_SHARE
        )
        friends = self.rng.choices(list(reach), list(reach.values()))[0]
        for _ in range(min(friends, len(self.friends))):
            friend = Visit(
                self.friends.popleft(),
                "moments" if target == "moments" else "mini_program",
                visit.product_id,
                campaign,
                visit.content_id,
                share_id,
                (link, self._share_url(share_id)),
                origin="share",
            )
            flow = SHARED_CONTENT_FLOW if visit.content_id else SHARED_LINK_FLOW
            self._plan(PendingVisit(friend, flow, ts + self._reaction_delay()))

    def _post_in_group(
        self,
        member: Member,
        ts: int,
        product: str,
        content: str | None = None,
        *,
        to_landing: bool = False,
    ) -> None:
        """A member posts a link (the product's, or the campaign landing page) in their group;
        members present may click it."""
        group = member.group_id
        link = BROKEN_LINK[0] if to_landing else f"lk-{product}"
        campaign = BROKEN_LINK_CAMPAIGN if to_landing else CAMPAIGNS[3]
        self.posted.add(member.user_id)
        self._emit_chat(member.user_id, ts, group, "link_share")
        share_id = self._emit_share(
            member.user_id,
            ts,
            channel="group_chat",
            target="group_chat",
            link=link,
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
                visit = Visit(
                    other.user_id,
                    "group_chat",
                    product,
                    campaign,
                    content,
                    share_id,
                    (link, self._share_url(share_id)),
                    origin="group",
                )
                self._plan(PendingVisit(visit, GROUP_LINK_FLOW, ts + self._reaction_delay()))

    def _emit_share(
        self,
        user: str,
        ts: int,
        *,
        channel: str,
        target: str,
        link: str,
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
            link_id=link,
            group_id=group,
        )
        return share_id

    @staticmethod
    def _share_url(share_id: str) -> str:
        """A share lands through a tracked share page, on the link it shared."""
        return f"https://shop.example/s/{share_id}"

    def _reaction_delay(self) -> int:
        """How long after a share a friend clicks it: minutes usually, hours sometimes."""
        return self._ms(MINUTE + 2 * HOUR * self.rng.random() ** 3)

    # -- group chats ---------------------------------------------------------------------------

    def _join_group(self, user: str, joined_at: int) -> list[tuple[Member, int]]:
        """Join a group, chat a little, maybe leave; returns the link posts to make later
        (once every member has joined, so the posts can find their audience)."""
        rng = self.rng
        group = rng.choices(list(self.group_weights), list(self.group_weights.values()))[0]
        left_at = self._leave_time(group, joined_at)
        member = Member(user, group, joined_at, left_at)
        self.members[group].append(member)
        self.membership[user] = member
        self._emit_chat(user, joined_at, group, "join")
        active_until = min(
            left_at or joined_at + self._ms(4 * HOUR), joined_at + self._ms(4 * HOUR)
        )
        if group == self.dying_group:
            active_until = min(active_until, self.dying_silent_at)
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3, 5, 8))):
            action = rng.choices(list(CHAT_ACTIONS), list(CHAT_ACTIONS.values()))[0]
            self._emit_chat(user, rng.randint(joined_at + 1, active_until - 1), group, action)
        if left_at is not None:
            self._emit_chat(user, left_at, group, "leave")
        if rng.random() < KOC_RATE:
            return [(member, rng.randint(joined_at + self._ms(5 * MINUTE), active_until - 1))]
        return []

    def _leave_time(self, group: str, joined_at: int) -> int | None:
        """When a new member will leave, if they do: the launch group's leavers go together,
        after it has fallen silent; elsewhere members drift away at any time."""
        rng = self.rng
        if group == self.dying_group:
            if rng.random() >= DYING_LEAVE_RATE:
                return None
            earliest, latest = DYING_LEAVES_MS
            return self.start_ms + rng.randint(self._ms(earliest), self._ms(latest))
        if rng.random() >= GROUP_LEAVE_RATE:
            return None
        latest = self.end_ms if self.features.communities else joined_at + self._ms(5 * HOUR)
        return rng.randint(joined_at + self._ms(10 * MINUTE), latest)

    def _group_is_alive(self, group: str, ts: int) -> bool:
        return group != self.dying_group or ts < self.dying_silent_at

    def _group_life(self) -> None:
        """Chat all run long: every member present says something now and then; in the launch
        group often, until it falls silent for good."""
        for group, members in self.members.items():
            dying = group == self.dying_group
            every = self._ms(DYING_CHAT_EVERY_MS if dying else MEMBER_CHAT_EVERY_MS)
            for member in members:
                until = self.end_ms if member.left_at is None else member.left_at
                if dying:
                    until = min(until, self.dying_silent_at)
                ts = member.joined_at + self._chat_gap(every)
                while ts < until:
                    action = self.rng.choices(list(CHAT_ACTIONS), list(CHAT_ACTIONS.values()))[0]
                    self._emit_chat(member.user_id, ts, group, action)
                    if self.rng.random() < GROUP_BUY_RATE:
                        self._group_buy(member, ts, until)
                    ts += self._chat_gap(every)

    def _group_buy(self, member: Member, chatted: int, until: int) -> None:
        """A member buys what the group was talking about, while still in it (group revenue)."""
        ts = chatted + self.rng.randint(self._ms(MINUTE), self._ms(30 * MINUTE))
        if ts < until:
            visit = Visit(
                member.user_id, "group_chat", self._pick_product(), CAMPAIGNS[3], origin="group"
            )
            self._purchase(visit, ts, self._new_session())

    def _chat_gap(self, mean: int) -> int:
        """Time to a member's next message: memoryless, `mean` on average, never 0."""
        return max(1, int(self.rng.expovariate(1) * mean))

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

    # -- the broken link ----------------------------------------------------------------------

    def _campaign_landing_visit(self, user: str, channel: str, arrived: int) -> PendingVisit:
        """A visitor the spring-sale campaign sends to its landing page."""
        visit = Visit(
            user, channel, self._pick_product(), BROKEN_LINK_CAMPAIGN, entry_link=BROKEN_LINK
        )
        return PendingVisit(visit, CAMPAIGN_LANDING_FLOW, arrived)

    def _link_is_down(self, link_id: str, ts: int) -> bool:
        return (
            self.features.broken_link
            and link_id == BROKEN_LINK[0]
            and self.outage[0] <= ts < self.outage[1]
        )

    # -- bots ----------------------------------------------------------------------------------

    def _cast_bots(self) -> None:
        """Turn a few shoppers into click bots (one per USERS_PER_BOT users, at most MAX_BOTS)."""
        shoppers = [n for n, role in enumerate(self.roles) if role == "shopper"]
        count = min(MAX_BOTS, len(self.user_ids) // USERS_PER_BOT, len(shoppers))
        for n in self.rng.sample(shoppers, count):
            self.roles[n] = "bot"

    def _bot(self, user: str, first_burst: int) -> None:
        """Bursts of ad landing-page clicks well under a second apart, again and again, and
        nothing else, until the run ends."""
        rng = self.rng
        ts = first_burst
        while ts < self.end_ms:
            product = self._pick_product()
            session = self._new_session()
            for _ in range(rng.randint(*BOT_BURST_CLICKS)):
                self._emit(
                    "click",
                    user,
                    ts,
                    "ad",
                    session_id=session,
                    campaign_id=BOT_CAMPAIGN,
                    landing_status=200,
                    page="landing",
                    link_id=f"lk-lp-{product}",
                    url=f"https://shop.example/lp/{product}",
                    props={"product_id": product},
                )
                ts += rng.randint(*(self._ms(gap) for gap in BOT_CLICK_GAP_MS))
            ts += rng.randint(*(self._ms(gap) for gap in BOT_BURST_EVERY_MS))

    # -- retention and timezones ---------------------------------------------------------------

    def _retain(self, user: str, channel: str, visit_ended: int) -> None:
        """Maybe, some time after a public-channel visit, join a group (then maybe never be
        heard from again) or follow the official account."""
        rng = self.rng
        if rng.random() >= RETAIN_RATE:
            return
        at = visit_ended + rng.randint(*(self._ms(delay) for delay in RETAIN_AFTER_MS))
        if at >= self.end_ms:  # after the run: not retained as far as this traffic shows
            return
        if rng.random() < FOLLOW_RATE:
            link, url = FOLLOW_LINK
            self._emit(
                "click",
                user,
                at,
                channel,
                page="other",
                link_id=link,
                url=url,
                props={"follow": True},
            )
            return
        group = rng.choices(list(GROUP_WEIGHTS), list(GROUP_WEIGHTS.values()))[0]
        self._emit_chat(user, at, group, "join")
        if rng.random() >= LURKER_RATE:  # a lurker joins and is never heard from again
            member = Member(user, group, at, None)
            self.members[group].append(member)
            self.membership[user] = member

    def _assign_timezones(self) -> dict[str, str]:
        zones, weights = list(TIMEZONES), list(TIMEZONES.values())
        return {
            user: self.rng.choices(zones, weights)[0]
            for user in self.user_ids
            if self.rng.random() < TZ_RATE
        }

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
            "tz": self.timezones.get(user_id),
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
        # No array: one without a content-type header is a batch record (README), not a mistake.
        return orjson.dumps(rng.choice((42, "click", None, True, -1.5)))
    elif how == "ts_without_offset":
        bad["ts"] = (EPOCH + timedelta(milliseconds=ts)).strftime("%Y-%m-%dT%H:%M:%S")
    elif how == "ts_in_seconds":
        bad["ts"] = ts // 1000
    else:  # bad_channel: channels become metric labels, so free text is refused
        bad["channel"] = rng.choice(("Group Chat", "WeChat-Moments", "", "APP"))
    return orjson.dumps(bad)


# -- public API ----------------------------------------------------------------------------------


def daytime_zone(now_ms: int) -> str:
    """A fixed-offset IANA zone where it is between 10:00 and 20:00 at `now_ms`: real-time
    traffic in it is outside the default journeys' quiet hours (22:00-08:00), which would
    hold its drop-offs until morning."""
    hour = (now_ms // 3_600_000) % 24
    offset = next(h for h in range(-12, 15) if 10 <= (hour + h) % 24 < 20)
    return f"Etc/GMT{-offset:+d}"  # the Etc/GMT zones count the other way round


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
    features: Features = ALL_FEATURES,
) -> Iterator[bytes]:
    """Simulated traffic of `users` people arriving over 3 hours times `time_scale` from
    `start_ms` (event time), walking `journeys` (default: the built-in ones) within their
    budgets or not, plus the stories `features` names, which run on for 56 hours times
    `time_scale` (group chat, bots, late joins).

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
        features=features,
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
