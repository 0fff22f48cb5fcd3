"""Fission: credit for clicks, new users and purchases through shares, up referral chains."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from linkwatch.errors import ConfigError
from linkwatch.fission import (
    MAX_HELD,
    METRICS,
    FissionRules,
    FissionSpec,
    ShareAttribution,
    final_level,
    k_factor,
)
from linkwatch.journeys import parse_journeys
from linkwatch.signals import (
    ENTITY_LEVEL,
    EntityOutput,
    Measure,
    Signal,
    signal,
)
from tests.builders import MIN, T0
from tests.conftest import CART_JOURNEY
from tests.entity_driver import Checked, drive, totals

DAY = 24 * 60 * MIN
RULES = FissionRules(max_hops=3, attribution_window_ms=30 * DAY)
FAR = T0 + 400 * DAY


def run(
    signals: Iterable[Signal], rules: FissionRules = RULES, until: int = FAR
) -> list[EntityOutput]:
    """Every share level in turn, each fed what the levels below sent it (as live)."""
    logic = Checked(ShareAttribution(rules))
    queue = list(signals)
    outputs: list[EntityOutput] = []
    for level in range(ENTITY_LEVEL, final_level(rules)):
        at_level = [s for s in queue if s.level == level]
        for _, produced in drive(logic, at_level, until).values():
            outputs += produced
            queue += [o for o in produced if isinstance(o, Signal)]
    return outputs


def credits(outputs: Iterable[EntityOutput], rules: FissionRules = RULES) -> list[tuple[Any, ...]]:
    """(user entity, hop, what, share_id, amount) of the credits that reach the user level."""
    found = [
        (o.entity, o.data["hop"], o.data["what"], o.data["share_id"], o.data["amount"])
        for o in outputs
        if isinstance(o, Signal) and o.level == final_level(rules)
    ]
    assert all(
        o.kind == "credit" and o.entity.startswith("user:")
        for o in outputs
        if isinstance(o, Signal) and o.level == final_level(rules)
    )
    return sorted(found)


def share(sid: str, sharer: str, ts: int, parent: str | None = None) -> Signal:
    data = {"sharer": sharer, "parent": parent, "target": "moments", "group_id": None}
    return signal(ENTITY_LEVEL, f"share:{sid}", "share", ts, data, f"e-share-{sid}")


def click(sid: str, clicker: str, ts: int, eid: str) -> Signal:
    return signal(ENTITY_LEVEL, f"share:{sid}", "click", ts, {"clicker": clicker}, eid)


def new_user(sid: str, user: str, ts: int, eid: str) -> Signal:
    return signal(ENTITY_LEVEL, f"share:{sid}", "new_user", ts, {"user": user}, eid)


def purchase(sid: str, buyer: str, ts: int, eid: str, amount: str = "99.50") -> Signal:
    data = {"buyer": buyer, "amount": amount, "currency": "CNY"}
    return signal(ENTITY_LEVEL, f"share:{sid}", "purchase", ts, data, eid)


def chain(length: int) -> list[Signal]:
    """u1 shares s1; u2, brought by s1, shares s2; ... and u<length+1> buys through the last."""
    shares = [
        share(f"s{i}", f"u{i}", T0 + i * MIN, f"s{i - 1}" if i > 1 else None)
        for i in range(1, length + 1)
    ]
    return [*shares, purchase(f"s{length}", f"u{length + 1}", T0 + DAY, "e-buy")]


def test_the_final_level_is_one_above_the_last_hop() -> None:
    assert final_level(FissionRules()) == 5  # the default: 3 hops
    assert final_level(FissionRules(max_hops=1)) == 3


def test_a_share_credits_its_sharer_at_hop_1() -> None:
    outputs = run(
        [
            share("s1", "v", T0),
            click("s1", "w", T0 + MIN, "e1"),
            new_user("s1", "w", T0 + MIN, "e1"),
            purchase("s1", "w", T0 + 2 * MIN, "e2", amount="99.50"),
        ]
    )
    assert credits(outputs) == [
        ("user:v", 1, "click", "s1", None),
        ("user:v", 1, "new_user", "s1", None),
        ("user:v", 1, "purchase", "s1", "99.50"),
    ]
    assert totals(outputs) == {
        ("fission_shares_total", ("moments",)): 1,
        ("fission_share_clicks_total", ("1",)): 1,
        ("fission_new_users_total", ("1",)): 1,
        ("fission_purchases_total", ("1",)): 1,
        ("fission_revenue_total", ("1", "CNY")): 99.5,
    }


@pytest.mark.parametrize("max_hops", [1, 3, 4])
def test_credit_climbs_the_referral_chain_up_to_max_hops(max_hops: int) -> None:
    rules = FissionRules(max_hops=max_hops)
    # u5 buys through u4's share; u4 was brought by u3's share, u3 by u2's, u2 by u1's.
    expected = [("user:u4", 1, "s4"), ("user:u3", 2, "s3"), ("user:u2", 3, "s2")]
    expected += [("user:u1", 4, "s1")]
    got = [(user, hop, sid) for user, hop, _, sid, _ in credits(run(chain(4), rules), rules)]
    assert sorted(got) == sorted(expected[:max_hops])
    assert all(amount == "99.50" for *_, amount in credits(run(chain(4), rules), rules))


def credit_ids(outputs: Iterable[EntityOutput]) -> list[str]:
    return [o.signal_id for o in outputs if isinstance(o, Signal) and o.kind == "credit"]


def test_credit_ids_derive_from_the_fact_and_the_hop_only() -> None:
    alone = credit_ids(run(chain(3)))
    assert len(alone) == 5  # 3 to users, 2 up the chain
    assert len(set(alone)) == len(alone)
    with_more = [share("x", "other", T0), click("x", "u9", T0 + 5 * MIN, "e-x"), *chain(3)]
    assert set(alone) <= set(credit_ids(run(with_more)))
    other_buy = [*chain(3)[:-1], purchase("s3", "u4", T0 + DAY, "e-other")]
    assert not set(alone) & set(credit_ids(run(other_buy)))


def test_a_referral_cycle_credits_each_hop_once_and_ends_at_max_hops() -> None:
    # Possible when profiles are forgotten and users re-acquired: a <- c <- b <- a.
    rules = FissionRules(max_hops=4)
    cycle = [
        share("s1", "a", T0, parent="s3"),
        share("s2", "b", T0, parent="s1"),
        share("s3", "c", T0, parent="s2"),
        purchase("s1", "x", T0 + DAY, "e-buy"),
    ]
    outputs = run(cycle, rules)
    got = [(user, hop) for user, hop, *_ in credits(outputs, rules)]
    assert sorted(got) == [("user:a", 1), ("user:a", 4), ("user:b", 3), ("user:c", 2)]
    assert len(set(credit_ids(outputs))) == len(credit_ids(outputs))


def test_a_fact_before_its_share_waits_for_it_then_is_credited_at_the_share_time() -> None:
    skewed = run([click("s1", "w", T0, "e1"), share("s1", "v", T0 + 5_000)])
    assert credits(skewed) == [("user:v", 1, "click", "s1", None)]
    (credit,) = [o for o in skewed if isinstance(o, Signal) and o.kind == "credit"]
    assert credit.ts == T0 + 5_000  # never before the time it was decided


def test_facts_whose_share_never_arrives_are_unattributed_when_the_window_ends() -> None:
    logic = ShareAttribution(RULES)
    state = logic.apply("share:s1", None, click("s1", "w", T0, "e1")).state
    assert logic.next_wake(state) == T0 + 30 * DAY
    step = logic.wake("share:s1", state, T0 + 30 * DAY)
    assert step.state is None
    assert totals(step.outputs) == {("fission_unattributed_total", ("1", "click", "no_share")): 1}


def test_at_most_max_held_facts_wait_for_a_late_share() -> None:
    early = [click("s1", f"w{i}", T0 + i, f"e{i}") for i in range(MAX_HELD + 3)]
    outputs = run([*early, share("s1", "v", T0 + MIN)])
    assert len(credits(outputs)) == MAX_HELD
    assert totals(outputs)["fission_unattributed_total", ("1", "click", "no_share")] == 3


def test_nobody_earns_credit_for_their_own_actions() -> None:
    # v clicks their own share; u1, who brought u2, buys through u2's share.
    outputs = run(
        [
            share("s1", "u1", T0),
            share("s2", "u2", T0 + MIN, parent="s1"),
            click("s2", "u2", T0 + 2 * MIN, "e-self"),
            purchase("s2", "u1", T0 + 3 * MIN, "e-up"),
        ]
    )
    assert credits(outputs) == [("user:u2", 1, "purchase", "s2", "99.50")]
    assert totals(outputs)["fission_unattributed_total", ("1", "click", "self")] == 1
    assert totals(outputs)["fission_unattributed_total", ("2", "purchase", "self")] == 1


def test_a_share_earns_until_the_window_passes_since_the_share_or_its_last_credit() -> None:
    outputs = run(
        [
            share("s1", "v", T0),
            click("s1", "a", T0 + 20 * DAY, "e1"),  # within 30 days of the share
            click("s1", "b", T0 + 45 * DAY, "e2"),  # within 30 days of the last credit
            click("s1", "c", T0 + 80 * DAY, "e3"),  # 35 days after it: the share is forgotten
        ]
    )
    assert [c[2] for c in credits(outputs)] == ["click", "click"]
    assert totals(outputs)["fission_unattributed_total", ("1", "click", "no_share")] == 1


def test_every_hop_has_its_own_window() -> None:
    # s1 keeps earning at hop 1, but nothing at hop 2 for 30 days: there it is forgotten.
    outputs = run(
        [
            share("s1", "u1", T0),
            share("s2", "u2", T0 + 20 * DAY, parent="s1"),
            click("s1", "x", T0 + 25 * DAY, "e-click"),
            purchase("s2", "u3", T0 + 40 * DAY, "e-late"),
        ]
    )
    assert [(user, hop, what) for user, hop, what, *_ in credits(outputs)] == [
        ("user:u1", 1, "click"),
        ("user:u2", 1, "purchase"),
    ]
    assert totals(outputs)["fission_unattributed_total", ("2", "purchase", "no_share")] == 1


def test_k_factor_is_new_users_per_sharer() -> None:
    assert k_factor(6, 4) == 1.5
    assert k_factor(3, 0) is None


def test_every_metric_used_is_declared() -> None:
    declared = {m.name: m for m in METRICS}
    signals = [
        *chain(3),
        new_user("s1", "u2", T0 + MIN, "e-n"),
        click("s1", "u1", T0 + MIN, "e-self"),
    ]
    for output in run(signals):
        if isinstance(output, Measure):
            assert len(output.labels) == len(declared[output.name].labels)
    assert all(m.name.endswith("_total") for m in METRICS if m.type == "counter")


def test_the_fission_section_of_the_journeys_file() -> None:
    section = '\n[fission]\nmax_hops = 2\nattribution_window = "7d"\n'
    assert parse_journeys(CART_JOURNEY + section).fission == FissionRules(
        enabled=True, max_hops=2, attribution_window_ms=7 * DAY
    )
    assert FissionSpec().rules() == FissionRules(True, 3, 30 * DAY)
    for bad in ("max_hops = 0", 'attribution_window = "soon"', "window = 3"):
        with pytest.raises(ConfigError):
            parse_journeys(CART_JOURNEY + f"\n[fission]\n{bad}\n")
    with pytest.raises(ValidationError):
        FissionSpec(max_hops=9)


# -- order and redelivery do not matter -------------------------------------------------------

USERS = [f"u{i}" for i in range(6)]


TIMES = st.integers(0, 90).map(lambda half_days: T0 + half_days * DAY // 2)
FACTS = st.lists(
    st.tuples(
        st.sampled_from([click, new_user, purchase]),
        st.integers(0, 4),  # which share (modulo how many there are)
        st.sampled_from(USERS),
        TIMES,
    ),
    max_size=25,
)
SHARES = st.lists(
    st.tuples(st.sampled_from(USERS), TIMES, st.integers(0, 5)), min_size=1, max_size=5
)


@st.composite
def share_forests(draw: st.DrawFn) -> list[Signal]:
    """A few shares, each maybe brought by an earlier one, and facts through them."""
    shares = draw(SHARES)
    found = [
        share(f"s{i}", sharer, ts, f"s{parent}" if parent < i else None)
        for i, (sharer, ts, parent) in enumerate(shares)
    ]
    for n, (make, i, actor, ts) in enumerate(draw(FACTS)):
        found.append(make(f"s{i % len(shares)}", actor, ts, f"e{n}"))
    return found


@settings(max_examples=150, deadline=None)
@given(signals=share_forests(), order=st.randoms(use_true_random=False), data=st.data())
def test_outputs_do_not_depend_on_order_or_redelivery(
    signals: list[Signal], order: Any, data: st.DataObject
) -> None:
    again = signals + data.draw(st.lists(st.sampled_from(signals), max_size=10))
    order.shuffle(again)
    assert run(again) == run(signals)
