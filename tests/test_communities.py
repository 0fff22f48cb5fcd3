"""Community health per group chat (communities.py), through the reference entity driver."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkwatch.communities import (
    METRICS,
    CommunityAlert,
    CommunityHealth,
    CommunityRules,
)
from linkwatch.errors import ConfigError
from linkwatch.journeys import parse_journeys
from linkwatch.signals import (
    ENTITY_LEVEL,
    EntityOutput,
    Measure,
    Published,
    Signal,
    member_hash,
    signal,
)
from tests.builders import MIN, T0
from tests.entity_driver import Checked, drive, drive_entity, totals

HOUR = 60 * MIN
DAY = 24 * HOUR
LOGIC = CommunityHealth(CommunityRules())  # defaults: 24h window, 1h buckets, 10 msgs, 24h quiet
_ids = iter(range(10**9))


def hours(h: float) -> int:
    return T0 + int(h * HOUR)


def chat(action: str, ts: int, user: str = "u1", group: str = "group:G1") -> Signal:
    data = {"action": action, "member": member_hash(user)}
    return signal(ENTITY_LEVEL, group, "chat", ts, data, f"e{next(_ids)}")


def revenue(amount: str, currency: str, ts: int, group: str = "group:G1") -> Signal:
    data = {"amount": amount, "currency": currency}
    return signal(ENTITY_LEVEL, group, "revenue", ts, data, f"e{next(_ids)}")


def messages(count: int, start: int, users: int = 1) -> list[Signal]:
    """`count` messages a minute apart, posted in turn by `users` members."""
    return [chat("message", start + i * MIN, f"u{i % users}") for i in range(count)]


def alerts(outputs: list[EntityOutput]) -> list[CommunityAlert]:
    records = [o.record for o in outputs if isinstance(o, Published)]
    assert all(isinstance(r, CommunityAlert) for r in records)
    return [r for r in records if isinstance(r, CommunityAlert)]


def test_an_active_group_that_goes_quiet_for_a_day_is_silent_until_someone_posts() -> None:
    signals = messages(10, hours(0), users=3)  # last message at 00:09
    signals.append(chat("message", hours(30), "u7"))
    state, outputs = drive_entity(LOGIC, "group:G1", signals, until=hours(40))
    silent, back = alerts(outputs)
    # The first bucket close at least 24h after the last message.
    assert (silent.alert, silent.status, silent.event_time) == (
        "silent",
        "raised",
        "2024-11-23T01:00:00.000Z",
    )
    assert (silent.messages, silent.last_message_at) == (0, "2024-11-22T00:09:00.000Z")
    assert silent.window_start == "2024-11-22T01:00:00.000Z"
    assert silent.group_id == "G1"
    # The close after the next message.
    assert (back.status, back.event_time, back.since) == (
        "recovered",
        "2024-11-23T07:00:00.000Z",
        silent.event_time,
    )
    assert (back.messages, back.active_members) == (1, 1)
    assert totals(outputs)["community_groups_silent", ()] == 0
    assert state is not None


def test_a_group_that_never_got_active_is_never_silent_and_is_forgotten() -> None:
    state, outputs = drive_entity(LOGIC, "group:G1", messages(9, hours(0)), until=hours(24 * 31))
    assert alerts(outputs) == []
    assert state is None


def test_one_alert_per_silence_and_a_new_one_only_after_the_group_is_active_again() -> None:
    signals = [
        *messages(10, hours(0)),
        chat("message", hours(30)),  # ends the silence; too little to be active again
        *messages(10, hours(80)),  # active again
    ]
    _, outputs = drive_entity(LOGIC, "group:G1", signals, until=hours(200))
    assert [(a.status, a.event_time) for a in alerts(outputs)] == [
        ("raised", "2024-11-23T01:00:00.000Z"),
        ("recovered", "2024-11-23T07:00:00.000Z"),
        ("raised", "2024-11-26T09:00:00.000Z"),  # 24h after the 80h burst's last message
    ]


def test_a_group_posting_less_than_daily_but_never_a_full_day_apart_stays_healthy() -> None:
    signals = messages(10, hours(0)) + [chat("message", hours(20 * k)) for k in range(1, 8)]
    _, outputs = drive_entity(LOGIC, "group:G1", signals, until=hours(150))
    assert alerts(outputs) == []


def test_a_group_silent_until_forgotten_leaves_the_gauge() -> None:
    state, outputs = drive_entity(LOGIC, "group:G1", messages(10, hours(0)), until=hours(24 * 31))
    assert [a.status for a in alerts(outputs)] == ["raised"]
    assert state is None
    assert totals(outputs)["community_groups_silent", ()] == 0


def test_losing_members_is_raised_when_net_leaves_reach_the_threshold() -> None:
    joins = [chat("join", hours(0) + i * 1000, f"u{i}") for i in range(20)]
    chatter = messages(4, hours(24.5), users=2)
    leaves = [chat("leave", hours(25) + i * 1000, f"u{i}") for i in range(5)]
    revenues = [revenue("0.10", "CNY", hours(25.2)), revenue("0.20", "CNY", hours(25.3))]
    signals = joins + chatter + leaves + revenues + [revenue("9.99", "USD", hours(25.4))]
    _, outputs = drive_entity(LOGIC, "group:G1", signals, until=hours(60))
    raised, recovered = alerts(outputs)
    assert (raised.alert, raised.status, raised.event_time) == (
        "losing_members",
        "raised",
        "2024-11-23T02:00:00.000Z",  # the joins left the window at 01:00, the leaves came later
    )
    assert (raised.joins, raised.leaves, raised.members) == (0, 5, 15)
    assert (raised.messages, raised.active_members) == (4, 2)
    assert raised.revenue == {"CNY": "0.30", "USD": "9.99"}
    # Recovered once the leaves are out of the window (24h after their bucket).
    assert (recovered.status, recovered.event_time, recovered.since) == (
        "recovered",
        "2024-11-24T02:00:00.000Z",
        raised.event_time,
    )
    measured = totals(outputs)
    assert measured["community_revenue_total", ("CNY",)] == pytest.approx(0.3)
    assert measured["community_chat_total", ("leave",)] == 5
    assert measured["community_chat_total", ("join",)] == 20
    assert measured["community_chat_total", ("message",)] == 4
    assert measured["community_groups_losing_members", ()] == 0


@pytest.mark.parametrize(
    ("leaves", "joins", "alerted"),
    [
        (9, 0, False),  # 9 of 200 members: under 5%
        (10, 0, True),  # 10 of 200: 5%
        (12, 3, False),  # joins offset leaves: net 9
    ],
)
def test_big_groups_must_lose_a_fraction_of_their_members(
    leaves: int, joins: int, alerted: bool
) -> None:
    signals = [chat("join", hours(0) + i * 1000, f"m{i}") for i in range(200)]
    signals += [chat("leave", hours(30) + i * 1000, f"m{i}") for i in range(leaves)]
    signals += [chat("join", hours(30.5) + i * 1000, f"new{i}") for i in range(joins)]
    _, outputs = drive_entity(LOGIC, "group:G1", signals, until=hours(40))
    assert bool(alerts(outputs)) is alerted


def test_leaves_of_members_joined_before_tracking_count_and_members_stay_at_zero() -> None:
    signals = [chat("leave", hours(1) + i * 1000, f"old{i}") for i in range(5)]
    [raised] = alerts(drive_entity(LOGIC, "group:G1", signals, until=hours(3))[1])
    assert (raised.alert, raised.members, raised.leaves) == ("losing_members", 0, 5)


def test_state_holds_only_the_window() -> None:
    busy = [s for h in range(72) for s in messages(5, hours(h), users=5)]
    state, _ = drive_entity(LOGIC, "group:G1", busy, until=hours(71.5))
    assert state is not None
    assert len(state.buckets) <= 24


def test_every_measure_is_declared_with_bounded_labels() -> None:
    group = "group:secret"
    signals = [chat("message", hours(0) + i * MIN, f"u{i}", group) for i in range(10)]
    signals += [chat(a, hours(1), "x", group) for a in ("mention", "red_packet", "link_share")]
    signals += [chat("join", hours(1), "y", group), revenue("5", "EUR", hours(1), group)]
    signals += [chat("leave", hours(30) + i, f"u{i}", group) for i in range(6)]
    _, outputs = drive_entity(LOGIC, group, signals, until=hours(24 * 40))
    declared = {m.name: m for m in METRICS}
    measures = [o for o in outputs if isinstance(o, Measure)]
    assert {m.name for m in measures} == set(declared)
    for m in measures:
        assert len(m.labels) == len(declared[m.name].labels)
        assert "secret" not in m.labels
        assert m.name.endswith("_total") == (declared[m.name].type == "counter")


def test_communities_section_of_the_journeys_file() -> None:
    journey = '[[journey]]\nname = "j"\nstep = [{ name = "a", match = { kind = "click" } },'
    journey += ' { name = "b", match = { kind = "purchase" }, within = "1h", cause = "distrust" }]'
    rules = parse_journeys(
        '[communities]\nwindow = "12h"\nbucket = "30m"\nrevenue_window = "3d"\n'
        'active_messages = 3\nsilent_after = "2d"\nlosing_members = 2\nlosing_fraction = 0\n'
        'forget_after = "10d"\n' + journey
    ).communities
    assert rules == CommunityRules(True, 12 * HOUR, 30 * MIN, 3 * DAY, 3, 2 * DAY, 2, 0.0, 10 * DAY)
    defaults = parse_journeys(journey).communities
    assert defaults == CommunityRules(True, DAY, HOUR, 7 * DAY, 10, DAY, 5, 0.05, 30 * DAY)
    assert defaults.revenue_window_ms == 7 * DAY
    for bad in (
        'window = "24h"\nbucket = "7h"',
        'silent_after = "40d"',  # longer than forget_after
        "losing_fraction = 2",
        'revenue_window = "a week"',
        "silence = true",
    ):
        with pytest.raises(ConfigError):
            parse_journeys(f"[communities]\n{bad}\n{journey}")


# -- properties -------------------------------------------------------------------------------


SMALL = CommunityRules(
    window_ms=4 * HOUR,
    bucket_ms=HOUR,
    active_messages=3,
    silent_after_ms=3 * HOUR,
    losing_members=2,
    losing_fraction=0.3,
    forget_after_ms=DAY,
)
group_signals = st.lists(
    st.tuples(
        st.sampled_from(["group:G1", "group:G2"]),
        st.sampled_from(["join", "leave", "message", "mention", "red_packet", "link_share", "$"]),
        st.integers(0, 3),  # which member
        st.integers(0, 30 * HOUR),
    ),
    max_size=120,
)


def build(raw: list[tuple[str, str, int, int]]) -> list[Signal]:
    return [
        revenue(f"{member}.25", "CNY", T0 + offset, group)
        if action == "$"
        else chat(action, T0 + offset, f"u{member}", group)
        for group, action, member, offset in raw
    ]


@settings(max_examples=60, deadline=None)
@given(group_signals, st.randoms(use_true_random=False))
def test_outputs_do_not_depend_on_order_or_duplicates(
    raw: list[tuple[str, str, int, int]], rnd: random.Random
) -> None:
    signals = build(raw)
    shuffled = signals + rnd.sample(signals, len(signals) // 2)
    rnd.shuffle(shuffled)
    logic = Checked(CommunityHealth(SMALL))
    until = T0 + 3 * DAY
    assert drive(logic, shuffled, until) == drive(logic, signals, until)


@settings(max_examples=60, deadline=None)
@given(group_signals, st.integers(0, 40 * HOUR))
def test_a_later_watermark_only_adds_outputs(
    raw: list[tuple[str, str, int, int]], cut: int
) -> None:
    """What has been said by time t stays said: outputs up to t are a prefix of later ones."""
    logic = Checked(CommunityHealth(SMALL))
    signals = build(raw)
    early = drive(logic, signals, T0 + cut)
    late = drive(logic, signals, T0 + 3 * DAY)
    for entity, (_, outputs) in early.items():
        assert late[entity][1][: len(outputs)] == outputs
    # Episodes pair up and every group is forgotten in the end.
    for _, (state, outputs) in late.items():
        assert state is None
        assert all(v == 0 for k, v in totals(outputs).items() if "groups" in k[0])


def test_a_message_at_the_very_moment_silence_was_raised_ends_it() -> None:
    signals = [*messages(10, hours(0)), chat("message", hours(25))]
    _, outputs = drive_entity(LOGIC, "group:G1", signals, until=hours(30))
    assert [(a.status, a.event_time) for a in alerts(outputs)] == [
        ("raised", "2024-11-23T01:00:00.000Z"),
        ("recovered", "2024-11-23T02:00:00.000Z"),
    ]
