"""Suppression before publishing: holdout, cooldown, frequency cap, quiet hours (held, then
released), each decided on event time so replay and live agree."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from linkwatch.errors import ConfigError
from linkwatch.journeys import JourneySet, parse_journeys
from linkwatch.replay import ReplayResult, replay_lines
from linkwatch.suppression import SuppressionRules, in_holdout
from linkwatch.triggers import Resolution, TopicRecord, Trigger
from tests.builders import MIN, raw
from tests.conftest import CART_JOURNEY

# 2024-11-22 is a Friday; T is 10:00 in Shanghai (02:00 UTC).
T = int(datetime(2024, 11, 22, 2, 0, tzinfo=UTC).timestamp() * 1000)


def rules(journeys: JourneySet, **kw: object) -> JourneySet:
    return replace(journeys, suppression=replace(SuppressionRules(), **kw))  # type: ignore[arg-type]


def cart(eid: str, minutes: float, user: str = "u1", **extra: object) -> bytes:
    return raw(event_id=eid, user_id=user, ts=T + int(minutes * MIN), page="cart", **extra)


def checkout(eid: str, minutes: float, user: str = "u1") -> bytes:
    return raw(event_id=eid, user_id=user, ts=T + int(minutes * MIN), page="checkout")


def tick(minutes: float) -> bytes:
    return raw("group_chat", event_id=f"tick-{minutes}", user_id="clock", ts=T + int(minutes * MIN))


def run(journeys: JourneySet, lines: list[bytes]) -> tuple[list[TopicRecord], ReplayResult]:
    published: list[TopicRecord] = []
    result = replay_lines(lines, journeys, on_trigger=published.append)
    return published, result


def dropoffs(records: list[TopicRecord]) -> list[Trigger]:
    return [r for r in records if isinstance(r, Trigger) and r.type == "dropoff"]


def test_holdout_is_deterministic_and_about_the_configured_share() -> None:
    users = [f"user-{n}" for n in range(20_000)]
    held_out = [u for u in users if in_holdout(u, 10.0)]
    assert 0.09 < len(held_out) / len(users) < 0.11
    assert held_out == [u for u in users if in_holdout(u, 10.0)]
    assert not any(in_holdout(u, 0.0) for u in users)


def test_holdout_users_get_no_trigger_but_are_recorded(cart_journeys: JourneySet) -> None:
    users = [f"user-{n}" for n in range(40)]
    holdout = [u for u in users if in_holdout(u, 25.0)]
    assert holdout  # the test needs some
    lines = [cart(f"c-{u}", 0, user=u) for u in users] + [tick(60)]
    published, result = run(rules(cart_journeys, holdout_percent=25.0), lines)
    assert {t.user_id for t in dropoffs(published)} == set(users) - set(holdout)
    assert result.report.withheld["dropoff", "holdout"] == len(holdout)
    # A dead end for a holdout user is held out too.
    dead = cart("dead", 61, user=holdout[0], landing_status=404)
    published, result = run(rules(cart_journeys, holdout_percent=25.0), [dead])
    assert published == []
    assert result.report.withheld["dead_end", "holdout"] == 1


def test_recovery_is_counted_per_group_for_live_uplift(cart_journeys: JourneySet) -> None:
    """Drop-offs and returns, split into holdout and treated users: the uplift's two rates."""
    users = [f"user-{n}" for n in range(60)]
    holdout = {u for u in users if in_holdout(u, 25.0)}
    back = users[::3]  # every third user comes back to checkout within the recovery window
    lines = [cart(f"c-{u}", 0, user=u) for u in users] + [tick(45)]
    lines += [checkout(f"back-{u}", 50, user=u) for u in back] + [tick(120)]
    _, result = run(rules(cart_journeys, holdout_percent=25.0), lines)
    recovery = result.report.recovery
    assert recovery["holdout", "dropped_off"] == len(holdout)
    assert recovery["treated", "dropped_off"] == len(users) - len(holdout)
    assert recovery["holdout", "resolved"] == len(holdout & set(back))
    assert recovery["treated", "resolved"] == len(set(back) - holdout)
    assert 0 < len(holdout & set(back)) < len(back)  # both groups really occur


def test_cooldown_per_journey(cart_journeys: JourneySet) -> None:
    # Two drop-offs of the same journey 40 minutes apart; a 1 h cooldown keeps the second back.
    lines = [cart("a", 0), cart("b", 40), tick(200)]
    published, result = run(rules(cart_journeys, cooldown_ms=60 * MIN), lines)
    assert [t.started_by for t in dropoffs(published)] == ["a"]
    assert result.report.withheld["dropoff", "cooldown"] == 1
    published, _ = run(rules(cart_journeys, cooldown_ms=30 * MIN), lines)
    assert len(dropoffs(published)) == 2


def test_frequency_cap_over_a_rolling_window(cart_journeys: JourneySet) -> None:
    lines = [cart(f"c{n}", n * 40) for n in range(5)] + [
        tick(24 * 60 + 40),
        cart("late", 24 * 60 + 41),
        tick(26 * 60),
    ]
    published, result = run(
        rules(cart_journeys, frequency_cap=2, frequency_window_ms=24 * 60 * MIN), lines
    )
    sent = [t.started_by for t in dropoffs(published)]
    assert sent == ["c0", "c1", "late"]  # the window rolled on before "late" dropped off
    assert result.report.withheld["dropoff", "frequency_cap"] == 3


def test_quiet_hours_hold_until_the_window_ends_in_the_users_timezone(
    cart_journeys: JourneySet,
) -> None:
    # A cart at 21:45 Shanghai time: its 30 m checkout budget ends at 22:15, in quiet hours
    # (22:00-08:00); the trigger goes out when event time reaches 08:00 the next morning.
    quiet = rules(
        cart_journeys,
        quiet_start_min=22 * 60,
        quiet_end_min=8 * 60,
        default_timezone="Asia/Shanghai",
    )
    evening = 11 * 60 + 45  # 21:45 Shanghai = T + 11h45m
    morning = 22 * 60  # 08:00 Shanghai next day = T + 22h
    before, _ = run(quiet, [cart("a", evening), tick(morning - 1)])
    assert dropoffs(before) == []
    after, _ = run(quiet, [cart("a", evening), tick(morning)])
    (trigger,) = dropoffs(after)
    assert trigger.deadline == datetime.fromtimestamp(
        (T + (evening + 30) * MIN) / 1000, UTC
    ).isoformat(timespec="milliseconds").replace("+00:00", "Z")  # content unchanged by the hold
    # The same moment is 14:15 in Berlin: not quiet there, sent at once.
    berlin, _ = run(quiet, [cart("a", evening, tz="Europe/Berlin"), tick(evening + 31)])
    assert len(dropoffs(berlin)) == 1


def test_a_return_during_the_hold_cancels_the_held_trigger(cart_journeys: JourneySet) -> None:
    quiet = rules(
        cart_journeys,
        quiet_start_min=22 * 60,
        quiet_end_min=8 * 60,
        default_timezone="Asia/Shanghai",
    )
    evening = 11 * 60 + 45
    lines = [
        cart("a", evening),
        raw(event_id="back", ts=T + (evening + 60) * MIN, page="checkout"),  # 22:45: came back
        tick(23 * 60),
    ]
    published, result = run(quiet, lines)
    assert dropoffs(published) == []
    assert not [r for r in published if isinstance(r, Resolution)]  # nothing to cancel
    assert result.report.withheld["dropoff", "resolved_while_held"] == 1


def test_suppression_config_is_validated() -> None:
    base = CART_JOURNEY + "\n[suppression]\n"
    journeys = parse_journeys(
        base + 'frequency_cap = 3\ncooldown = "6h"\nquiet_hours = "22:00-08:00"\n'
        'default_timezone = "Asia/Shanghai"\nholdout_percent = 5\n'
    )
    assert journeys.suppression.quiet_start_min == 22 * 60
    assert journeys.suppression.cooldown_ms == 6 * 60 * MIN
    for bad, expected in [
        ('quiet_hours = "25:00-08:00"', "time of day"),
        ('quiet_hours = "8-9"', "quiet_hours"),
        ('default_timezone = "Mars/Olympus"', "unknown timezone"),
        ("holdout_percent = 120", "holdout_percent"),
        ('cooldown = "soon"', "cooldown"),
    ]:
        with pytest.raises(ConfigError, match=expected):
            parse_journeys(base + bad + "\n")


def test_unknown_timezone_in_an_event_is_rejected() -> None:
    from linkwatch.codec import decode_event
    from linkwatch.errors import RecordRejected

    with pytest.raises(RecordRejected) as info:
        decode_event(raw(tz="Mars/Olympus"))
    assert info.value.field == "tz"
    assert decode_event(raw(tz="Asia/Shanghai")).tz == "Asia/Shanghai"
