"""The per-user profile: fake-traffic flags, the retention loop, profile lifetime and the signals
only a user's history can tell (profile.py, applied by the engine)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkwatch.codec import decode_event
from linkwatch.engine import JourneyEngine, Output, Transition
from linkwatch.errors import ConfigError
from linkwatch.events import EventBase, format_ts
from linkwatch.journeys import JourneySet, parse_journeys
from linkwatch.partition import PartitionProcessor
from linkwatch.profile import BotFlagged, FlaggedEvent
from linkwatch.report import Report
from linkwatch.signals import Signal
from linkwatch.state import dump_state, has_work, load_state
from linkwatch.suppression import SuppressionRules, Withheld
from linkwatch.triggers import REMEDIES, Cause, Trigger, derive_id
from tests.builders import MIN, T0, record
from tests.conftest import CART_JOURNEY

SEC = 1_000
LATENESS = 10_000  # CART_JOURNEY's allowed lateness
HOUR = 60 * MIN
DAY = 24 * HOUR

PROFILE_SECTIONS = """
[retention]
enabled = true
not_retained_after = "7d"
dormant_after = "30d"
profile_ttl = "90d"

[fake_traffic]
enabled = true
burst_clicks = 20
burst_window = "1m"
min_dwell = "2s"
flag_for = "24h"
"""


def journeys(extra: str = "") -> JourneySet:
    return parse_journeys(CART_JOURNEY + PROFILE_SECTIONS + extra)


JOURNEYS = journeys()


class Run:
    """One partition fed event by event, as replay and the live worker feed it."""

    def __init__(self, js: JourneySet = JOURNEYS) -> None:
        self.processor = PartitionProcessor(JourneyEngine(js))
        self.outputs: list[Output] = []

    def feed(self, *events: dict[str, Any]) -> Run:
        for event in events:
            watermark = self.processor.watermark
            if watermark is not None and event["ts"] - watermark > DAY:
                # Other users' traffic would have moved time on: an event days after the
                # watermark is otherwise refused as a broken clock.
                self.until(event["ts"] - LATENESS)
            self.outputs += self.processor.process(decode_event(orjson.dumps(event))).outputs
        return self

    def until(self, watermark: int) -> Run:
        self.outputs += self.processor.advance_to(watermark)
        return self

    def of(self, kind: type[Any]) -> list[Any]:
        return [o for o in self.outputs if isinstance(o, kind)]

    def triggers(self, type_: str) -> list[Trigger]:
        return [t for t in self.of(Trigger) if t.type == type_]


def click(
    eid: str, ts: int, page: str = "product", user: str = "u1", **extra: Any
) -> dict[str, Any]:
    return record("click", event_id=eid, user_id=user, ts=ts, page=page, **extra)


def group(
    eid: str, ts: int, action: str = "join", user: str = "u1", **extra: Any
) -> dict[str, Any]:
    return record("group_chat", event_id=eid, user_id=user, ts=ts, action=action, **extra)


def clicks(
    n: int, start: int, gap: int, user: str = "u1", prefix: str = "b"
) -> list[dict[str, Any]]:
    return [click(f"{prefix}{i}", start + i * gap, user=user) for i in range(n)]


# -- fake traffic ---------------------------------------------------------------------------------


def test_twenty_quick_clicks_flag_the_user_from_the_twentieth() -> None:
    burst = clicks(20, T0, 1 * SEC)
    run = Run().feed(*burst).until(burst[-1]["ts"])
    assert run.of(BotFlagged) == [BotFlagged("u1", burst[-1]["ts"], burst[-1]["ts"] + DAY, 20)]
    # The first 19 were ordinary traffic; the one that completed the burst is flagged.
    assert [e.event_id for e in run.of(EventBase)] == [f"b{i}" for i in range(19)]
    assert [f.event.event_id for f in run.of(FlaggedEvent)] == ["b19"]


def test_nineteen_quick_clicks_are_no_burst() -> None:
    run = Run().feed(*clicks(19, T0, 1 * SEC)).until(T0 + HOUR)
    assert run.of(BotFlagged) == []
    assert len(run.of(EventBase)) == 19


def test_a_gap_of_min_dwell_ends_the_run() -> None:
    # 10 quick clicks, a pause of exactly min_dwell, 10 more: two runs of 10, no burst.
    paused = clicks(10, T0, 1 * SEC) + clicks(10, T0 + 11 * SEC, 1 * SEC, prefix="c")
    assert Run().feed(*paused).until(T0 + HOUR).of(BotFlagged) == []
    # Just under min_dwell, the same 20 clicks are one run.
    quick = clicks(10, T0, 1 * SEC) + clicks(10, T0 + 11 * SEC - 1, 1 * SEC, prefix="c")
    assert len(Run().feed(*quick).until(T0 + HOUR).of(BotFlagged)) == 1


def test_any_other_event_in_the_span_prevents_the_flag() -> None:
    burst = clicks(20, T0, 1 * SEC)
    share = record("share", event_id="s", user_id="u1", ts=T0 + 9 * SEC + 500)
    assert Run().feed(*burst, share).until(T0 + HOUR).of(BotFlagged) == []
    # Another user's event in between changes nothing.
    other = record("share", event_id="s", user_id="u2", ts=T0 + 9 * SEC + 500)
    assert len(Run().feed(*burst, other).until(T0 + HOUR).of(BotFlagged)) == 1


def test_the_clicks_must_fall_within_the_burst_window() -> None:
    js = journeys().fake_traffic
    narrow = replace(
        JOURNEYS,
        fake_traffic=replace(js, burst_clicks=5, burst_window_ms=3 * SEC, min_dwell_ms=SEC),
    )
    # Five clicks 750 ms apart span 3 s: within the window. 800 ms apart span 3.2 s: not.
    assert len(Run(narrow).feed(*clicks(5, T0, 750)).until(T0 + HOUR).of(BotFlagged)) == 1
    assert Run(narrow).feed(*clicks(5, T0, 800)).until(T0 + HOUR).of(BotFlagged) == []


def test_a_flagged_user_feeds_no_journey_trigger_or_signal_until_the_flag_ends() -> None:
    burst = clicks(20, T0 + MIN, 1 * SEC)
    flagged_at = burst[-1]["ts"]
    until = flagged_at + DAY
    run = Run().feed(
        click("cart", T0, "cart"),  # an open cart journey, its checkout due at T0 + 30m
        *burst,
        click("cart2", flagged_at + HOUR, "cart"),
        record("purchase", event_id="buy", user_id="u1", ts=flagged_at + 2 * HOUR),
        click("late-flag", until - 1, "cart"),
    )
    run.until(until - 1)
    # The open instance ended without a drop-off, and nothing after the flag started one.
    assert run.triggers("dropoff") == []
    transitions = run.of(Transition)
    assert transitions == [
        Transition("cart_to_purchase", "started", "cart"),
        Transition("cart_to_purchase", "retired", "cart"),
    ]
    flagged = [f.event.event_id for f in run.of(FlaggedEvent)]
    assert flagged == ["b19", "cart2", "buy", "late-flag"]
    assert not {e.event_id for e in run.of(EventBase)} & set(flagged)
    assert not [s for s in run.of(Signal) if s.ts >= flagged_at]
    # At `until` the flag has ended: the user is ordinary traffic again.
    run.feed(click("back", until, "cart")).until(until + MIN)
    assert "back" in {e.event_id for e in run.of(EventBase)}
    assert run.of(Transition) == [*transitions, Transition("cart_to_purchase", "started", "cart")]


def test_a_new_burst_extends_the_flag_without_a_second_flag() -> None:
    first = clicks(20, T0, 1 * SEC)
    later = clicks(20, T0 + 20 * HOUR, 1 * SEC, prefix="c")
    end = later[-1]["ts"] + DAY
    run = Run().feed(*first, *later, click("after-first-flag", first[-1]["ts"] + DAY + MIN, "cart"))
    run.feed(click("after", end, "cart")).until(end)
    assert len(run.of(BotFlagged)) == 1
    flagged = {f.event.event_id for f in run.of(FlaggedEvent)}
    assert "after-first-flag" in flagged
    assert "after" in {e.event_id for e in run.of(EventBase)}


def test_report_counts_flagged_users_and_events_apart_from_commerce() -> None:
    burst = clicks(20, T0, 1 * SEC)
    buy = record("purchase", event_id="buy", user_id="u1", ts=T0 + MIN)
    run = Run().feed(*burst, buy).until(T0 + HOUR)
    report = Report(JOURNEYS)
    report.count_outputs(run.outputs)
    fake = report.to_dict()["fake_traffic"]
    assert fake == {"users_flagged": 1, "events_from_flagged_users": {"click": 1, "purchase": 1}}
    web = report.commerce.channels["web"]
    assert (web.clicks, web.purchases) == (19, 0)


# -- retention ------------------------------------------------------------------------------------


def test_not_retained_fires_exactly_at_the_deadline() -> None:
    deadline = T0 + 7 * DAY
    run = Run().feed(click("first", T0, ref_share_id="s9", channel="ad")).until(deadline - 1)
    assert run.of(Trigger) == []
    run.until(deadline)
    (trigger,) = run.of(Trigger)
    assert trigger.type == "not_retained"
    assert trigger.trigger_id == derive_id("not_retained", "u1", "first")
    assert trigger.event_time == trigger.deadline == format_ts(deadline)
    assert (trigger.cause, trigger.remedy) == (Cause.NOT_RETAINED, REMEDIES[Cause.NOT_RETAINED])
    assert trigger.started_by == "first"
    assert (trigger.context.channel, trigger.context.ref_share_id) == ("ad", "s9")
    assert trigger.journey is None
    assert trigger.missed_step is None


@pytest.mark.parametrize(
    "retaining",
    [
        group("join", T0 + 7 * DAY),  # exactly at the deadline is in time
        click("follow", T0 + DAY, props={"follow": True}),
    ],
)
def test_a_user_retained_in_time_gets_no_not_retained(retaining: dict[str, Any]) -> None:
    run = Run().feed(click("first", T0), retaining).until(T0 + 8 * DAY)
    assert run.triggers("not_retained") == []


def test_retained_too_late_still_gets_not_retained() -> None:
    run = Run().feed(click("first", T0), group("join", T0 + 7 * DAY + 1)).until(T0 + 8 * DAY)
    assert [t.event_time for t in run.triggers("not_retained")] == [format_ts(T0 + 7 * DAY)]


@pytest.mark.parametrize("channel", ["group_chat", "mini_program", "offline_store"])
def test_users_acquired_outside_public_channels_get_no_not_retained(channel: str) -> None:
    run = Run().feed(click("first", T0, channel=channel)).until(T0 + 80 * DAY)
    assert run.of(Trigger) == []


def test_dormant_fires_once_per_silence_and_a_later_event_rearms_it() -> None:
    run = Run().feed(group("join", T0), click("last", T0 + DAY))
    first_due = T0 + DAY + 30 * DAY
    run.until(first_due - 1)
    assert run.of(Trigger) == []
    run.until(first_due + 20 * DAY)
    assert [t.trigger_id for t in run.triggers("dormant")] == [derive_id("dormant", "u1", "last")]
    assert run.triggers("dormant")[0].event_time == format_ts(first_due)
    back = first_due + 25 * DAY
    run.feed(click("back", back)).until(back + 30 * DAY)
    dormant = run.triggers("dormant")
    assert [(t.started_by, t.event_time) for t in dormant] == [
        ("last", format_ts(first_due)),
        ("back", format_ts(back + 30 * DAY)),
    ]
    assert run.triggers("not_retained") == []


def test_a_user_never_retained_is_never_dormant() -> None:
    run = Run().feed(click("first", T0, channel="group_chat")).until(T0 + 89 * DAY)
    assert run.of(Trigger) == []


def test_suppression_applies_to_retention_triggers() -> None:
    held_out = replace(JOURNEYS, suppression=SuppressionRules(holdout_percent=100))
    run = Run(held_out).feed(click("first", T0)).until(T0 + 8 * DAY)
    assert [(w.record.type, w.reason) for w in run.of(Withheld)] == [("not_retained", "holdout")]
    assert run.of(Trigger) == []
    # Quiet hours 22:00-08:00 UTC: a deadline at 23:00 waits until 08:00.
    quiet = replace(
        JOURNEYS, suppression=SuppressionRules(quiet_start_min=22 * 60, quiet_end_min=8 * 60)
    )
    run = Run(quiet).feed(click("first", T0 + 23 * HOUR))
    run.until(T0 + 7 * DAY + 23 * HOUR)
    assert run.of(Trigger) == []
    run.until(T0 + 8 * DAY + 8 * HOUR)
    assert [t.type for t in run.of(Trigger)] == ["not_retained"]


def test_frequency_cap_counts_retention_and_drop_offs_in_event_time_order() -> None:
    capped = replace(
        JOURNEYS,
        suppression=SuppressionRules(frequency_cap=1, frequency_window_ms=30 * DAY),
    )
    # The not_retained deadline (7d) comes before the cart's drop-off (7d + 30m): it goes out,
    # the drop-off is capped, however far the watermark jumps at once.
    events = [click("first", T0), click("cart", T0 + 7 * DAY, "cart")]
    for step in (MIN, 10 * DAY):
        run = Run(capped).feed(*events)
        for watermark in range(T0, T0 + 10 * DAY + 1, step):
            run.until(watermark)
        assert [t.type for t in run.of(Trigger)] == ["not_retained"]
        assert [(w.record.type, w.reason) for w in run.of(Withheld)] == [
            ("dropoff", "frequency_cap")
        ]


def test_no_retention_trigger_while_the_user_is_flagged() -> None:
    burst = clicks(20, T0 + 7 * DAY - HOUR, 1 * SEC)
    run = Run().feed(click("first", T0), *burst).until(T0 + 8 * DAY)
    assert run.of(Trigger) == []
    assert len(run.of(BotFlagged)) == 1


# -- lifetime -------------------------------------------------------------------------------------


def test_an_idle_user_keeps_a_trimmed_profile_until_profile_ttl() -> None:
    run = Run().feed(group("join", T0), click("c", T0 + MIN))
    store = run.processor.store
    run.until(T0 + 2 * HOUR)  # past the state TTL: de-dup memory dropped, the profile kept
    state = store["u1"]
    assert state.recent == ()
    assert state.profile is not None
    assert len(dump_state(state)) < 300
    last = T0 + MIN
    run.until(last + 90 * DAY - 1)
    assert "u1" in store
    run.until(last + 90 * DAY)
    assert "u1" not in store
    assert [t.type for t in run.of(Trigger)] == ["dormant"]  # fired before the profile went


def test_a_late_event_that_moves_the_state_ttl_leaves_the_user_scheduled() -> None:
    run = Run().feed(click("a", T0), click("tick", T0 + 30 * SEC, user="other"))
    run.feed(click("late", T0 + 15 * SEC))  # behind the watermark (T0 + 20s): late
    # The wake-up at the old state TTL (T0 + 1h) finds nothing due; the user must still be
    # woken for the later one, and for the not_retained deadline.
    run.until(T0 + HOUR + 5 * SEC)
    run.until(T0 + 2 * HOUR)
    assert run.processor.store["u1"].recent == ()
    run.until(T0 + 7 * DAY)
    assert [t.user_id for t in run.triggers("not_retained")] == ["u1"]


def test_a_returning_user_is_new_only_after_the_profile_expired() -> None:
    run = Run().feed(click("a", T0))
    run.feed(click("b", T0 + 60 * DAY))  # within 90 days of "a": known
    run.feed(click("c", T0 + 60 * DAY + 90 * DAY + 1))  # 90 days after "b": forgotten, new again
    run.until(T0 + 200 * DAY)
    seen = [(s.entity, s.ts) for s in run.of(Signal) if s.kind == "seen"]
    assert seen == [("user:u1", T0), ("user:u1", T0 + 150 * DAY + 1)]


def test_without_profiles_an_idle_user_is_forgotten_after_the_state_ttl() -> None:
    off = parse_journeys(
        CART_JOURNEY
        + "\n[communities]\nenabled = false\n[fission]\nenabled = false\n"
        + "[tiers]\nenabled = false\n"
    )
    run = Run(off).feed(click("a", T0))
    run.until(T0 + HOUR)
    assert run.processor.store == {}
    assert run.of(Signal) == []


# -- signals --------------------------------------------------------------------------------------


def signals(run: Run, kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(s.entity, dict(s.data)) for s in run.of(Signal) if s.kind == kind]


def test_the_first_event_says_who_brought_the_user() -> None:
    run = Run().feed(
        click("a", T0, ref_share_id="s1", channel="moments"),
        click("b", T0 + MIN, ref_share_id="s2"),
    )
    run.until(T0 + HOUR)
    assert signals(run, "seen") == [("user:u1", {"channel": "moments", "via_share": "s1"})]
    assert signals(run, "new_user") == [("share:s1", {"user": "u1"})]
    (seen,) = [s for s in run.of(Signal) if s.kind == "seen"]
    assert seen.level == 5  # FINAL: 2 + max_hops (3)


def test_a_share_names_the_share_that_brought_its_sharer() -> None:
    share = record("share", event_id="sh", user_id="u1", ts=T0 + MIN, share_id="s2", group_id="g")
    run = Run().feed(click("a", T0, ref_share_id="s1"), share).until(T0 + HOUR)
    data = {"sharer": "u1", "parent": "s1", "target": "group_chat", "group_id": "g"}
    assert signals(run, "share") == [("share:s2", data)]


def purchase(eid: str, ts: int) -> dict[str, Any]:
    return record("purchase", event_id=eid, user_id="u1", ts=ts, amount="10.50")


def test_group_revenue_needs_recent_activity_in_the_group_and_no_leave() -> None:
    run = Run().feed(
        group("m", T0, "message", group_id="g1"),
        purchase("p1", T0 + 7 * DAY),  # exactly the revenue window after: counts
        purchase("p2", T0 + 7 * DAY + 1),  # past it
    )
    run.until(T0 + 8 * DAY)
    assert signals(run, "revenue") == [("group:g1", {"amount": "10.50", "currency": "CNY"})]
    left = Run().feed(
        group("m", T0, "message", group_id="g1"),
        group("l", T0 + MIN, "leave", group_id="g1"),
        purchase("p", T0 + HOUR),
    )
    assert signals(left.until(T0 + 2 * HOUR), "revenue") == []
    # Leaving another group does not matter.
    other = Run().feed(
        group("m", T0, "message", group_id="g1"),
        group("l", T0 + MIN, "leave", group_id="g2"),
        purchase("p", T0 + HOUR),
    )
    assert [e for e, _ in signals(other.until(T0 + 2 * HOUR), "revenue")] == ["group:g1"]


def test_each_signal_family_follows_its_section() -> None:
    events = [
        click("a", T0, ref_share_id="s1"),
        group("m", T0 + MIN, "message"),
        record("share", event_id="sh", user_id="u1", ts=T0 + 2 * MIN),
        purchase("p", T0 + 3 * MIN),
    ]
    kinds = {
        "communities": {"revenue"},
        "fission": {"new_user", "share"},
        "tiers": {"seen"},
    }
    everything = {k for family in kinds.values() for k in family}
    assert {s.kind for s in Run().feed(*events).until(T0 + HOUR).of(Signal)} == everything
    for section, own in kinds.items():
        js = journeys(f"\n[{section}]\nenabled = false\n")
        produced = {s.kind for s in Run(js).feed(*events).until(T0 + HOUR).of(Signal)}
        assert produced == everything - own, section


# -- configuration and wire form ------------------------------------------------------------------


def test_retained_by_is_compiled_like_a_journey_match() -> None:
    js = journeys().retention
    custom = parse_journeys(
        CART_JOURNEY
        + '\n[retention]\nenabled = true\nretained_by = [{ kind = "share", group_id = '
        + "{ exists = true } }]\n"
    ).retention
    assert custom.retained_by != js.retained_by
    share = decode_event(orjson.dumps(record("share", group_id="g")))
    assert [m.matches(share) for m in custom.retained_by] == [True]
    with pytest.raises(ConfigError, match="retained_by"):
        parse_journeys(CART_JOURNEY + '\n[retention]\nretained_by = [{ kind = "login" }]\n')


def test_deadlines_must_fall_within_the_profile_life() -> None:
    with pytest.raises(ConfigError, match="dormant_after must not exceed profile_ttl"):
        parse_journeys(CART_JOURNEY + '\n[retention]\ndormant_after = "91d"\n')


def test_state_with_a_profile_round_trips() -> None:
    run = Run().feed(
        click("a", T0, ref_share_id="s1"),
        group("m", T0 + MIN, "message", group_id="g1"),
        *clicks(20, T0 + 2 * MIN, 1 * SEC),
    )
    run.until(T0 + 3 * MIN)
    state = run.processor.store["u1"]
    profile = state.profile
    assert profile is not None
    assert profile.group
    assert profile.clicks
    assert profile.flagged_until
    assert load_state(dump_state(state, partition=2)) == (2, state)


def test_version_3_states_load_without_a_profile() -> None:
    state = Run().feed(click("a", T0)).processor.store["u1"]
    wire = orjson.loads(dump_state(state._replace(profile=None)))
    v3 = orjson.dumps([3, *wire[1:-1]])
    assert load_state(v3) == (-1, state._replace(profile=None))


# -- determinism ----------------------------------------------------------------------------------


@st.composite
def traffic(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A few users: bursts of clicks, group activity, shares and purchases, with gaps from
    sub-second to weeks, so flags, retention deadlines and profile expiry all happen."""
    events: list[dict[str, Any]] = []
    for user in range(draw(st.integers(1, 3))):
        ts = T0 + draw(st.integers(0, 10 * SEC))
        channel = draw(st.sampled_from(["web", "ad", "group_chat"]))
        for n in range(draw(st.integers(1, 30))):
            ts += draw(
                st.one_of(
                    st.integers(0, 3 * SEC), st.integers(0, 2 * HOUR), st.integers(0, 40 * DAY)
                )
            )
            uid, eid = f"u{user}", f"u{user}-{n}"
            kind = draw(st.sampled_from(["click"] * 8 + ["group_chat", "share", "purchase"]))
            if kind == "click":
                page = draw(st.sampled_from(["cart", "checkout", "product"]))
                ref = draw(st.sampled_from([None, "s1"]))
                events.append(click(eid, ts, page, uid, channel=channel, ref_share_id=ref))
            elif kind == "group_chat":
                action = draw(st.sampled_from(["join", "message", "leave"]))
                events.append(group(eid, ts, action, uid))
            else:
                events.append(record(kind, event_id=eid, user_id=uid, ts=ts))
    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    return events


def profile_outputs(outputs: Iterable[Output]) -> list[Any]:
    """What the profile decides, by identity: triggers (published or withheld), flags,
    flagged events and signals."""
    found: list[Any] = []
    for out in outputs:
        if isinstance(out, Trigger):
            found.append(("trigger", out.trigger_id))
        elif isinstance(out, Withheld):
            found.append(("withheld", out.reason, getattr(out.record, "trigger_id", None)))
        elif isinstance(out, BotFlagged):
            found.append(("flag", *out))
        elif isinstance(out, FlaggedEvent):
            found.append(("flagged", out.event.event_id))
        elif isinstance(out, Signal):
            found.append(("signal", out.signal_id))
    return sorted(found, key=repr)


SUPPRESSED = replace(
    JOURNEYS,
    suppression=SuppressionRules(
        frequency_cap=2, frequency_window_ms=10 * DAY, cooldown_ms=HOUR, holdout_percent=30.0
    ),
)


def run_events(events: Sequence[dict[str, Any]], js: JourneySet) -> Run:
    return Run(js).feed(*events).until(1 << 62)


@settings(max_examples=120, deadline=None)
@given(traffic(), st.data(), st.booleans())
def test_arrival_order_within_half_the_lateness_does_not_change_the_outputs(
    events: list[dict[str, Any]], data: st.DataObject, suppressed: bool
) -> None:
    js = SUPPRESSED if suppressed else JOURNEYS
    jitters = data.draw(
        st.lists(st.integers(0, LATENESS // 2), min_size=len(events), max_size=len(events))
    )
    keyed = sorted((e["ts"] + j, i) for i, (e, j) in enumerate(zip(events, jitters, strict=True)))
    reordered = [events[i] for _, i in keyed]
    expected = profile_outputs(run_events(events, js).outputs)
    assert profile_outputs(run_events(reordered, js).outputs) == expected


@settings(max_examples=120, deadline=None)
@given(traffic(), st.booleans())
def test_how_far_the_watermark_jumps_does_not_change_the_outputs(
    events: list[dict[str, Any]], suppressed: bool
) -> None:
    js = SUPPRESSED if suppressed else JOURNEYS
    fine = run_events(events, js)
    held_back = PartitionProcessor(JourneyEngine(js), sources=["events", "silent"])
    coarse: list[Output] = []
    for event in events:
        coarse += held_back.process(decode_event(orjson.dumps(event)), "events").outputs
    coarse += held_back.flush(close_open=True)
    assert profile_outputs(coarse) == profile_outputs(fine.outputs)
    # Everyone is forgotten in the end.
    assert held_back.store == {}
    assert fine.processor.store == {}


@settings(max_examples=120, deadline=None)
@given(traffic(), st.integers(1, 60 * DAY))
def test_the_wake_up_advance_reports_is_next_wakeup(
    events: list[dict[str, Any]], step: int
) -> None:
    """partition.py schedules users by these: they must agree, or a deadline is missed."""
    engine = JourneyEngine(JOURNEYS)
    store = Run(JOURNEYS).feed(*events).processor.store
    watermark = events[-1]["ts"]
    for _ in range(5):
        watermark += step
        for user_id, state in list(store.items()):
            advanced = engine.advance(user_id, state, watermark)
            if advanced.state is None:
                del store[user_id]
            elif advanced.state is state and not advanced.outputs:
                # Nothing was due: the wake-up scheduled for this state is still pending.
                assert advanced.wake is None
                assert engine.next_wakeup(state) > watermark
            else:
                assert advanced.wake == engine.next_wakeup(advanced.state)
                assert advanced.wake > watermark
                store[user_id] = advanced.state


@settings(max_examples=120, deadline=None)
@given(traffic(), st.data())
def test_every_user_keeps_a_wake_up_no_later_than_they_need(
    events: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Whatever arrives late or out of order, no user is left without a wake-up by their
    `next_wakeup` (a pending deadline would never fire, a profile never expire)."""
    jitters = data.draw(
        st.lists(st.integers(0, 2 * LATENESS), min_size=len(events), max_size=len(events))
    )
    keyed = sorted((e["ts"] + j, i) for i, (e, j) in enumerate(zip(events, jitters, strict=True)))
    run = Run()
    processor = run.processor
    for _, i in keyed:
        run.feed(events[i])
        for user_id, state in processor.store.items():
            needed = processor.engine.next_wakeup(state)
            index = processor._wakeups if has_work(state) else processor._expiries
            scheduled = index.entries()
            assert any(at <= needed for at, user in scheduled if user == user_id), user_id


def test_the_property_traffic_flags_and_fires_retention_at_all() -> None:
    """Guard against vacuous properties: the kinds of traffic they draw do flag and fire."""
    events = [*clicks(20, T0, SEC, user="bot"), click("x", T0, user="v", channel="ad")]
    outputs = run_events(sorted(events, key=lambda e: (e["ts"], e["event_id"])), JOURNEYS).outputs
    kinds = {k[0] for k in profile_outputs(outputs)}
    assert {"trigger", "flag", "flagged", "signal"} <= kinds
