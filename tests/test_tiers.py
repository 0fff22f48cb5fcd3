"""Lifecycle tiers: new, normal, seed, value, core, and the profile updates that announce them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkwatch.errors import ConfigError
from linkwatch.events import parse_ts
from linkwatch.journeys import parse_journeys
from linkwatch.signals import EntityOutput, Measure, Published, Signal, signal
from linkwatch.tiers import METRICS, Credits, ProfileUpdate, TierRules, Tiers
from tests.builders import MIN, T0
from tests.conftest import CART_JOURNEY
from tests.entity_driver import Checked, drive_entity, totals

DAY = 24 * 60 * MIN
HOUR = 60 * MIN
FINAL = 5  # fission's default final level
assert T0 % DAY == 0  # T0 is midnight UTC: day n of the test starts at T0 + n * DAY


def seen(ts: int, user: str = "u") -> Signal:
    data = {"channel": "web", "via_share": None}
    return signal(FINAL, f"user:{user}", "seen", ts, data, f"e-seen-{ts}")


def buy(ts: int, amount: str = "100.00", currency: str = "CNY", user: str = "u") -> Signal:
    data = {"amount": amount, "currency": currency, "via_share": None}
    return signal(FINAL, f"user:{user}", "purchase", ts, data, f"e-buy-{ts}-{amount}{currency}")


def shared(ts: int, share_id: str, user: str = "u") -> Signal:
    data = {"share_id": share_id}
    return signal(FINAL, f"user:{user}", "share", ts, data, f"e-{share_id}-{ts}")


def credit(ts: int, what: str, hop: int = 1, amount: str | None = None, user: str = "u") -> Signal:
    data = {
        "hop": hop,
        "what": what,
        "share_id": "s1",
        "amount": amount,
        "currency": "CNY" if amount else None,
    }
    cause = f"cause-{ts}-{what}-{amount}"
    return signal(FINAL, f"user:{user}", "credit", ts, data, cause, str(hop))


def run(
    signals: Iterable[Signal], until: int, rules: TierRules | None = None, user: str = "u"
) -> tuple[Any, list[EntityOutput]]:
    return drive_entity(Checked(Tiers(rules or TierRules(), FINAL)), f"user:{user}", signals, until)


def updates(outputs: Iterable[EntityOutput]) -> list[ProfileUpdate]:
    found = []
    for output in outputs:
        if isinstance(output, Published):
            assert output.topic == "profiles"
            assert isinstance(output.record, ProfileUpdate)
            assert output.key == output.record.user_id
            found.append(output.record)
    return found


def changes(outputs: Iterable[EntityOutput]) -> list[tuple[int, str | None, str, str]]:
    """(event time, previous tier, tier, reason) of each tier change (not figures updates)."""
    return [
        (parse_ts(u.event_time), u.previous_tier, u.tier, u.reason)
        for u in updates(outputs)
        if u.reason != "credits"
    ]


def test_a_user_is_new_for_new_for_then_normal() -> None:
    first = T0 + 3 * HOUR
    state, outputs = run([seen(first)], until=first + 30 * DAY)
    assert changes(outputs) == [
        (first, None, "new", "first_seen"),
        (first + 7 * DAY, "new", "normal", "default"),  # exact: not rounded to a day
    ]
    assert state is not None
    assert totals(outputs) == {
        ("tier_changes_total", ("none", "new")): 1,
        ("tier_changes_total", ("new", "normal")): 1,
        ("tier_users", ("new",)): 0,
        ("tier_users", ("normal",)): 1,
    }


def test_purchases_make_value_then_core_and_each_lapses_by_whole_days() -> None:
    signals = [seen(T0), buy(T0 + DAY + 5 * HOUR), buy(T0 + 30 * DAY + 5 * HOUR, "150.00")]
    _, outputs = run(signals, until=T0 + 500 * DAY)
    assert changes(outputs) == [
        (T0, None, "new", "first_seen"),
        (T0 + DAY + 5 * HOUR, "new", "value", "purchase"),
        (T0 + 30 * DAY + 5 * HOUR, "value", "core", "repeat_purchases"),
        # day 1's purchase counts on days 1 .. 90: core ends as day 91 begins
        (T0 + 91 * DAY, "core", "value", "purchase"),
        # day 30's purchase counts on days 30 .. 394 (365 days)
        (T0 + 395 * DAY, "value", "normal", "default"),
    ]
    value, core, *_ = updates(outputs)[1:]
    assert (value.ltv, value.purchases) == ({"CNY": "100.00"}, 1)
    assert (core.ltv, core.purchases) == ({"CNY": "250.00"}, 2)


def test_two_purchases_more_than_repeat_within_apart_are_not_core() -> None:
    _, outputs = run([buy(T0), buy(T0 + 90 * DAY)], until=T0 + 91 * DAY)
    assert [tier for _, _, tier, _ in changes(outputs)] == ["value"]


def test_ltv_is_per_currency_over_the_ltv_window() -> None:
    signals = [
        buy(T0, "10.50"),
        buy(T0 + 200 * DAY, "5", "USD"),
        buy(T0 + 370 * DAY, "1.25"),
        buy(T0 + 371 * DAY, "2.00"),  # a repeat: core, and an update showing the LTV
    ]
    _, outputs = run(signals, until=T0 + 371 * DAY)
    core = updates(outputs)[-1]
    assert core.tier == "core"
    # Day 0's purchase left the 365-day window at the start of day 365.
    assert (core.ltv, core.purchases) == ({"CNY": "3.25", "USD": "5"}, 3)


def test_shares_that_bring_clicks_make_seed_and_share_driven_sales_core() -> None:
    signals = [
        seen(T0),
        shared(T0 + HOUR, "s1"),
        shared(T0 + 2 * HOUR, "s2"),
        credit(T0 + 3 * HOUR, "click"),
        credit(T0 + 3 * HOUR, "new_user"),
        credit(T0 + 4 * HOUR, "purchase", amount="88.00"),
        credit(T0 + 5 * HOUR, "purchase", hop=2, amount="12.00"),
    ]
    _, outputs = run(signals, until=T0 + 10 * HOUR)
    assert changes(outputs)[1:] == [
        (T0 + 3 * HOUR, "new", "seed", "share_clicks"),
        (T0 + 4 * HOUR, "seed", "core", "share_driven_sales"),
    ]
    core = next(u for u in updates(outputs) if u.tier == "core" and u.reason != "credits")
    assert core.shares == 2
    assert core.ltv == {}  # others' purchases are not the sharer's spend
    assert core.credits == [
        Credits(hop=1, clicks=1, new_users=1, purchases=1, revenue={"CNY": "88.00"})
    ]
    assert totals(outputs)["fission_sharers_total", ()] == 1  # a user's first share only
    last = updates(outputs)[-1]  # the hop-2 purchase moved the figures, not the tier
    assert (last.reason, last.tier) == ("credits", "core")
    assert [c.hop for c in last.credits] == [1, 2]


def test_credits_further_up_a_chain_do_not_change_the_tier() -> None:
    signals = [seen(T0), credit(T0 + HOUR, "click", hop=2), credit(T0 + HOUR, "purchase", 2, "9")]
    _, outputs = run(signals, until=T0 + DAY)
    assert [tier for _, _, tier, _ in changes(outputs)] == ["new"]


def test_credit_that_leaves_the_tier_publishes_the_sharer_figures() -> None:
    """Per sharer, shares, clicks, new users, purchases and revenue are published as they
    move, not only when the tier changes."""
    signals = [seen(T0), credit(T0 + HOUR, "click"), credit(T0 + 2 * HOUR, "click")]
    _, outputs = run(signals, until=T0 + DAY)
    figures = [u for u in updates(outputs) if u.reason == "credits"]
    assert len(figures) == 1  # the first click made the user seed: that change says it
    (second,) = figures
    assert (second.tier, second.previous_tier) == ("seed", "seed")
    assert parse_ts(second.event_time) == T0 + 2 * HOUR
    assert [(c.hop, c.clicks) for c in second.credits] == [(1, 2)]
    assert len({u.update_id for u in updates(outputs)}) == len(updates(outputs))


def test_seed_needs_seed_min_clicks() -> None:
    clicks = [credit(T0 + i * HOUR, "click") for i in range(1, 4)]
    _, outputs = run([seen(T0), *clicks], until=T0 + DAY, rules=TierRules(seed_min_clicks=3))
    assert changes(outputs)[1:] == [(T0 + 3 * HOUR, "new", "seed", "share_clicks")]


def test_the_first_signal_of_any_kind_is_first_seen() -> None:
    # A credit stamped by another device's clock comes before the user's own first event.
    _, outputs = run([credit(T0, "new_user"), seen(T0 + HOUR)], until=T0 + 8 * DAY)
    assert changes(outputs) == [
        (T0, None, "new", "first_seen"),
        (T0 + 7 * DAY, "new", "normal", "default"),
    ]
    assert {u.first_seen for u in updates(outputs)} == {"2024-11-22T00:00:00.000Z"}


def test_a_quiet_user_is_forgotten_once_nothing_counts_any_more() -> None:
    state, _ = run([seen(T0)], until=T0 + 180 * DAY - 1)
    assert state is not None
    state, outputs = run([seen(T0)], until=T0 + 180 * DAY)  # profile_ttl
    assert state is None
    assert all(n == 0 for (name, _), n in totals(outputs).items() if name == "tier_users")

    # A purchase counts for 365 days: the user is kept (and value) until it lapses.
    state, _ = run([buy(T0)], until=T0 + 365 * DAY - 1)
    assert state is not None
    state, outputs = run([buy(T0)], until=T0 + 365 * DAY)
    assert state is None
    assert changes(outputs)[-1] == (T0 + 365 * DAY, "value", "normal", "default")

    # Back after being forgotten: a new profile.
    _, outputs = run([buy(T0), seen(T0 + 400 * DAY)], until=T0 + 400 * DAY)
    assert changes(outputs)[-1] == (T0 + 400 * DAY, None, "new", "first_seen")


def test_update_ids_derive_from_user_tier_and_time() -> None:
    signals = [seen(T0), buy(T0 + DAY), buy(T0 + 2 * DAY)]
    first = [u.update_id for u in updates(run(signals, T0 + 400 * DAY)[1])]
    assert first == [u.update_id for u in updates(run(signals, T0 + 400 * DAY)[1])]
    assert len(set(first)) == len(first) == 5
    other = [seen(T0, "w"), buy(T0 + DAY, user="w"), buy(T0 + 2 * DAY, user="w")]
    assert not set(first) & {u.update_id for u in updates(run(other, T0 + 400 * DAY, user="w")[1])}


def test_a_signal_at_another_level_is_a_wiring_error() -> None:
    misrouted = signal(FINAL - 1, "user:u", "seen", T0, {"channel": "web"}, "e1")
    with pytest.raises(ValueError, match="level 4"):
        Tiers(TierRules(), FINAL).apply("user:u", None, misrouted)


def test_records_and_metrics_are_documented_and_bounded() -> None:
    for model in (ProfileUpdate, Credits):
        assert all(field.description for field in model.model_fields.values())
    _, outputs = run([seen(T0), shared(T0, "s"), buy(T0 + DAY)], until=T0 + 400 * DAY)
    declared = {m.name: m for m in METRICS}
    for output in outputs:
        if isinstance(output, Measure):
            assert len(output.labels) == len(declared[output.name].labels)
    (record, *_) = updates(outputs)
    assert record.model_dump(mode="json")["type"] == "profile_update"


def test_the_tiers_section_of_the_journeys_file() -> None:
    section = """
[tiers]
new_for = "3d"
repeat_within = "30d"
ltv_window = "180d"
seed_min_clicks = 2
profile_ttl = "90d"
"""
    assert parse_journeys(CART_JOURNEY + section).tiers == TierRules(
        enabled=True,
        new_for_ms=3 * DAY,
        repeat_within_days=30,
        ltv_window_days=180,
        seed_min_clicks=2,
        profile_ttl_ms=90 * DAY,
    )
    for bad in ('repeat_within = "36h"', 'new_for = "soon"', "seed_min_clicks = 0", "ttl = 1"):
        with pytest.raises(ConfigError):
            parse_journeys(CART_JOURNEY + f"\n[tiers]\n{bad}\n")


# -- order and redelivery do not matter -------------------------------------------------------


TIMES = st.integers(0, 1000).map(lambda half_days: T0 + half_days * DAY // 2)
USER_SIGNALS = st.lists(
    st.one_of(
        TIMES.map(seen),
        st.builds(buy, TIMES, st.sampled_from(["1", "2.50"]), st.sampled_from(["CNY", "USD"])),
        st.builds(shared, TIMES, st.sampled_from(["s1", "s2"])),
        st.builds(
            credit,
            TIMES,
            st.sampled_from(["click", "new_user", "purchase"]),
            st.integers(1, 3),
            st.just("3.00"),
        ),
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(signals=USER_SIGNALS, order=st.randoms(use_true_random=False), data=st.data())
def test_outputs_do_not_depend_on_order_or_redelivery(
    signals: list[Signal], order: Any, data: st.DataObject
) -> None:
    again = signals + data.draw(st.lists(st.sampled_from(signals), max_size=10))
    order.shuffle(again)
    until = T0 + 2000 * DAY  # long after everything: the user is forgotten
    state, outputs = run(again, until)
    assert (state, outputs) == run(signals, until)
    assert state is None
    tier = None
    for update in updates(outputs):
        if update.reason == "credits":  # a figures update: the tier stays
            assert update.tier == update.previous_tier == tier
            continue
        assert update.tier != update.previous_tier
        # Each update follows the one before, or starts over a user forgotten as normal.
        assert update.previous_tier == tier or (update.previous_tier, tier) == (None, "normal")
        tier = update.tier
    users = Counter({k: v for k, v in totals(outputs).items() if k[0] == "tier_users"})
    assert all(n == 0 for n in users.values())
