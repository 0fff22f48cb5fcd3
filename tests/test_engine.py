"""The semantics of the journey engine, rule by rule (README, "Journey semantics")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from linkwatch.codec import decode_event
from linkwatch.engine import JourneyEngine, Transition, Verdict, new_state
from linkwatch.events import format_ts
from linkwatch.journeys import JourneySet
from linkwatch.partition import PartitionProcessor
from linkwatch.replay import ReplayResult, replay_lines
from linkwatch.triggers import Resolution, TopicRecord, Trigger
from tests.builders import at, raw

Rec = dict[str, Any]


def click(eid: str, ts: int, page: str, user: str = "u1", **extra: Any) -> bytes:
    return raw(event_id=eid, user_id=user, ts=ts, page=page, **extra)


def purchase(eid: str, ts: int, user: str = "u1", **extra: Any) -> bytes:
    return raw("purchase", event_id=eid, user_id=user, ts=ts, **extra)


def run(
    journeys: JourneySet, lines: Sequence[bytes], close_open: bool = False
) -> tuple[list[Trigger], ReplayResult]:
    """Triggers only; `run_all` also gives the resolutions."""
    records, result = run_all(journeys, lines, close_open)
    return [r for r in records if isinstance(r, Trigger)], result


def run_all(
    journeys: JourneySet, lines: Sequence[bytes], close_open: bool = False
) -> tuple[list[TopicRecord], ReplayResult]:
    records: list[TopicRecord] = []
    result = replay_lines(lines, journeys, on_trigger=records.append, close_open=close_open)
    return records, result


def tick(ts: int) -> bytes:
    """An unrelated event that moves the watermark to ts - lateness."""
    return raw("group_chat", event_id=f"tick-{ts}", user_id="clock", ts=ts)


# Rule 1 ---------------------------------------------------------------------------------------


def test_first_step_starts_an_instance_only_when_none_is_active(cart_journeys: JourneySet) -> None:
    _, result = run(
        cart_journeys, [click("a", at(0), "cart"), click("b", at(1), "cart"), tick(at(5))]
    )
    assert result.report.started["cart_to_purchase"] == 1
    assert result.report.open["cart_to_purchase", "cart"] == 1


# Rule 2 ---------------------------------------------------------------------------------------


def test_an_event_advances_to_the_furthest_matching_step(cart_journeys: JourneySet) -> None:
    triggers, result = run(
        cart_journeys, [click("a", at(0), "cart"), purchase("b", at(5)), tick(at(600))]
    )
    assert result.report.converted["cart_to_purchase"] == 1
    assert result.report.reached["cart_to_purchase", "checkout"] == 0  # skipped, not reached
    assert triggers == []


def test_budget_runs_from_the_event_that_reached_the_previous_step(
    cart_journeys: JourneySet,
) -> None:
    # pay has a 10m budget from checkout (reached at 25m), not from cart (0m).
    lines = [
        click("a", at(0), "cart"),
        click("b", at(25), "checkout"),
        click("c", at(34), "other", props={"step": "pay"}),
        tick(at(200)),
    ]
    triggers, result = run(cart_journeys, lines)
    assert result.report.reached["cart_to_purchase", "pay"] == 1
    assert [(t.last_step, t.missed_step) for t in triggers] == [("pay", "purchase")]
    assert triggers[0].deadline == format_ts(at(34) + 3_600_000)


def test_the_starting_event_also_reaches_later_steps_it_matches(
    default_journeys: JourneySet,
) -> None:
    # A share click that lands on a product page has reached both the share click and the
    # product: no `unfamiliar` drop-off for a product the user saw.
    share_click = click("a", at(0), "product", ref_share_id="s1", channel="moments")
    triggers, result = run(default_journeys, [share_click, tick(at(90))])
    journey = "share_click_to_purchase"
    assert result.report.reached[journey, "share_click"] == 1
    assert result.report.reached[journey, "product"] == 1
    assert [t.missed_step for t in triggers if t.journey == journey] == []
    assert result.report.open[journey, "product"] == 1


def test_a_starting_event_that_is_also_the_last_step_converts(cart_journeys: JourneySet) -> None:
    from linkwatch.journeys import parse_journeys

    text = """
[[journey]]
name = "any_purchase"
  [[journey.step]]
  name = "first"
  match = { kind = "purchase" }
  [[journey.step]]
  name = "paid"
  match = { kind = "purchase", currency = "CNY" }
  within = "1h"
  cause = "distracted"
"""
    triggers, result = run(parse_journeys(text), [purchase("p", at(0)), tick(at(120))])
    assert result.report.converted["any_purchase"] == 1
    assert triggers == []
    assert sum(result.report.open.values()) == 0


# Rule 3 ---------------------------------------------------------------------------------------


def test_reaching_the_last_step_converts_without_a_trigger(cart_journeys: JourneySet) -> None:
    lines = [
        click("a", at(0), "cart"),
        click("b", at(1), "checkout"),
        click("c", at(2), "other", props={"step": "pay"}),
        purchase("d", at(3)),
        tick(at(600)),
    ]
    triggers, result = run(cart_journeys, lines)
    assert result.report.converted["cart_to_purchase"] == 1
    assert triggers == []


def test_exit_ends_the_instance_without_a_trigger(cart_journeys: JourneySet) -> None:
    leave = raw("group_chat", event_id="x", ts=at(5), action="leave")
    triggers, result = run(cart_journeys, [click("a", at(0), "cart"), leave, tick(at(600))])
    assert result.report.exited["cart_to_purchase", "cart"] == 1
    assert triggers == []


def test_an_event_past_the_deadline_cannot_advance(cart_journeys: JourneySet) -> None:
    # checkout arrives 31m after cart: the 30m budget ran out at 30m.
    triggers, result = run(
        cart_journeys, [click("a", at(0), "cart"), click("b", at(31), "checkout"), tick(at(32))]
    )
    assert [(t.missed_step, t.event_time) for t in triggers] == [("checkout", format_ts(at(30)))]
    assert result.report.reached["cart_to_purchase", "checkout"] == 0


def test_an_event_exactly_at_the_deadline_still_advances(cart_journeys: JourneySet) -> None:
    triggers, result = run(
        cart_journeys, [click("a", at(0), "cart"), click("b", at(30), "checkout"), tick(at(35))]
    )
    assert triggers == []
    assert result.report.reached["cart_to_purchase", "checkout"] == 1


def test_an_event_past_the_deadline_may_start_a_new_instance(cart_journeys: JourneySet) -> None:
    triggers, result = run(
        cart_journeys, [click("a", at(0), "cart"), click("b", at(45), "cart"), tick(at(46))]
    )
    assert len(triggers) == 1
    assert triggers[0].started_by == "a"
    assert result.report.started["cart_to_purchase"] == 2
    assert result.report.open["cart_to_purchase", "cart"] == 1


def test_event_time_decides_not_arrival_order(cart_journeys: JourneySet) -> None:
    # checkout (at 0m05s) arrives before the cart (0m00s) that it follows: within lateness.
    in_order = [click("a", at(0), "cart"), click("b", at(0, 5), "checkout"), tick(at(600))]
    swapped = [in_order[1], in_order[0], in_order[2]]
    first, r1 = run(cart_journeys, in_order)
    second, r2 = run(cart_journeys, swapped)
    assert [t.trigger_id for t in first] == [t.trigger_id for t in second]
    assert r1.report.reached == r2.report.reached
    assert first[0].missed_step == "pay"  # checkout was reached in both orders


# Rule 4 ---------------------------------------------------------------------------------------


def test_drop_off_trigger_carries_breakpoint_cause_remedy_and_context(
    default_journeys: JourneySet,
) -> None:
    lines = [
        click("a", at(0), "cart", campaign_id="c11", content_id="k1", link_id="L7", channel="app"),
        tick(at(31)),
    ]
    triggers, _ = run(default_journeys, lines)
    (trigger,) = [t for t in triggers if t.journey == "cart_to_purchase"]
    assert trigger.type == "dropoff"
    assert trigger.user_id == "u1"
    assert (trigger.last_step, trigger.missed_step) == ("cart", "checkout")
    assert trigger.cause == "indifferent"
    assert trigger.remedy == "offer, coupon, social proof"
    assert trigger.deadline == trigger.event_time == format_ts(at(30))
    assert trigger.last_step_at == format_ts(at(0))
    assert trigger.started_by == "a"
    ctx = trigger.context
    assert (ctx.channel, ctx.campaign_id, ctx.content_id, ctx.link_id, ctx.page) == (
        "app",
        "c11",
        "k1",
        "L7",
        "cart",
    )


def test_step_remedy_overrides_the_default(cart_journeys: JourneySet) -> None:
    from linkwatch.journeys import parse_journeys
    from tests.conftest import CART_JOURNEY

    text = CART_JOURNEY.replace(
        'cause = "indifferent"', 'cause = "indifferent"\n  remedy = "10% off"'
    )
    triggers, _ = run(parse_journeys(text), [click("a", at(0), "cart"), tick(at(31))])
    assert triggers[0].remedy == "10% off"


# Rule 5 ---------------------------------------------------------------------------------------


def test_failed_landing_emits_a_dead_end_at_once(cart_journeys: JourneySet) -> None:
    processor = PartitionProcessor(JourneyEngine(cart_journeys))
    result = processor.process(decode_event(click("a", at(0), "cart", landing_status=502)))
    (trigger,) = [o for o in result.outputs if isinstance(o, Trigger)]
    assert trigger.type == "dead_end"
    assert trigger.cause == "dead_end"
    assert trigger.context.landing_status == 502
    assert trigger.event_time == format_ts(at(0))
    # A failed hop reaches no step: no cart instance was started.
    processor.flush()
    assert list(processor.open_instances()) == []


@pytest.mark.parametrize("status", [200, 301, 399])
def test_working_landing_is_no_dead_end(cart_journeys: JourneySet, status: int) -> None:
    triggers, result = run(cart_journeys, [click("a", at(0), "cart", landing_status=status)])
    assert triggers == []
    assert result.report.started["cart_to_purchase"] == 1


# Rule 6 ---------------------------------------------------------------------------------------


def test_deadline_fires_only_when_the_watermark_passes_it(cart_journeys: JourneySet) -> None:
    processor = PartitionProcessor(JourneyEngine(cart_journeys))
    processor.process(decode_event(click("a", at(0), "cart")))
    # deadline 30m; lateness 10s: the watermark reaches 30m when an event at 30m10s arrives.
    just_before = processor.process(decode_event(tick(at(30, 9.999))))
    assert not [o for o in just_before.outputs if isinstance(o, Trigger)]
    on_time = processor.process(decode_event(tick(at(30, 10))))
    assert [o.missed_step for o in on_time.outputs if isinstance(o, Trigger)] == ["checkout"]


def test_late_events_are_counted_and_do_not_move_journeys(cart_journeys: JourneySet) -> None:
    lines = [click("a", at(0), "cart"), tick(at(5)), click("b", at(1), "checkout"), tick(at(60))]
    triggers, result = run(cart_journeys, lines)
    assert result.report.late == 1
    assert [t.missed_step for t in triggers] == ["checkout"]


def test_late_dead_end_still_fires(cart_journeys: JourneySet) -> None:
    lines = [tick(at(5)), click("a", at(1), "product", landing_status=404)]
    triggers, result = run(cart_journeys, lines)
    assert result.report.late == 1
    assert [t.type for t in triggers] == ["dead_end"]


def test_duplicate_event_ids_are_ignored_and_counted(cart_journeys: JourneySet) -> None:
    dup = click("a", at(0), "cart", landing_status=404)
    triggers, result = run(cart_journeys, [dup, dup, click("a", at(1), "checkout")])
    assert result.report.duplicate == 2
    assert len(triggers) == 1


def test_duplicate_window_is_bounded_per_user(cart_journeys: JourneySet) -> None:
    window = cart_journeys.dedup_window
    first = click("first", at(0), "other")
    fillers = [click(f"f{i}", at(0, i + 1), "other") for i in range(window)]
    _, within = run(cart_journeys, [first, *fillers[:-1], first])
    _, beyond = run(cart_journeys, [first, *fillers, first])
    assert within.report.duplicate == 1
    assert beyond.report.duplicate == 0  # forgotten: the window holds `window` ids
    # Another user's event with the same id is not a duplicate.
    _, other_user = run(cart_journeys, [first, click("first", at(0), "other", user="u2")])
    assert other_user.report.duplicate == 0


def test_far_future_event_is_rejected(cart_journeys: JourneySet) -> None:
    from linkwatch.errors import RecordRejected, RejectReason

    processor = PartitionProcessor(JourneyEngine(cart_journeys))
    processor.process(decode_event(click("a", at(0), "cart")))
    processor.process(decode_event(click("b", at(24 * 60 - 1), "other")))  # within a day
    with pytest.raises(RecordRejected) as info:
        processor.process(decode_event(click("c", at(3 * 24 * 60), "other")))
    assert info.value.reason is RejectReason.FUTURE_TIMESTAMP
    assert info.value.field == "ts"


# Rule 7 ---------------------------------------------------------------------------------------


def test_trigger_ids_are_derived_from_inputs(cart_journeys: JourneySet) -> None:
    lines = [click("a", at(0), "cart"), click("x", at(0), "cart", user="u2"), tick(at(60))]
    first, _ = run(cart_journeys, lines)
    again, _ = run(cart_journeys, lines)
    assert [t.trigger_id for t in first] == [t.trigger_id for t in again]
    assert len({t.trigger_id for t in first}) == 2
    renamed, _ = run(cart_journeys, [click("b", at(0), "cart"), tick(at(60))])
    assert renamed[0].trigger_id not in {t.trigger_id for t in first}


# End of input ---------------------------------------------------------------------------------


def test_open_instances_fire_only_with_close_open(cart_journeys: JourneySet) -> None:
    lines = [click("a", at(0), "cart"), click("b", at(10), "cart", user="u2")]
    kept, kept_result = run(cart_journeys, lines)
    closed, closed_result = run(cart_journeys, lines, close_open=True)
    assert kept == []
    assert sum(kept_result.report.open.values()) == 2
    assert [t.missed_step for t in closed] == ["checkout", "checkout"]
    assert sum(closed_result.report.open.values()) == 0


def test_end_of_input_applies_buffered_events_and_fires_passed_deadlines(
    cart_journeys: JourneySet,
) -> None:
    # The checkout at 40m is still buffered at end of input; the cart's 30m deadline is
    # proven passed by it, so it fires even without --close-open.
    triggers, result = run(cart_journeys, [click("a", at(0), "cart"), click("b", at(40), "other")])
    assert [t.missed_step for t in triggers] == ["checkout"]
    assert result.report.valid == 2


# Engine purity ---------------------------------------------------------------------------------


def test_engine_never_mutates_the_state_it_is_given(cart_journeys: JourneySet) -> None:
    engine = JourneyEngine(cart_journeys)
    state = engine.accept(new_state(), decode_event(click("a", at(0), "cart")), None).state
    snapshot = (dict(state.instances), state.pending, state.recent, state.last_seen)
    accepted = engine.accept(state, decode_event(click("b", at(1), "checkout")), None)
    assert accepted.verdict is Verdict.ACCEPTED
    advanced = engine.advance("u1", accepted.state, at(50))
    assert advanced.state is not None
    assert (dict(state.instances), state.pending, state.recent, state.last_seen) == snapshot
    kinds = [o.outcome for o in advanced.outputs if isinstance(o, Transition)]
    assert kinds == ["started", "reached", "dropped_off"]


def test_idle_users_are_forgotten_after_the_state_ttl(cart_journeys: JourneySet) -> None:
    from dataclasses import replace

    # Nothing that needs a profile (a profile outlives the state TTL: see test_profile).
    without_profiles = replace(
        cart_journeys,
        communities=replace(cart_journeys.communities, enabled=False),
        fission=replace(cart_journeys.fission, enabled=False),
        tiers=replace(cart_journeys.tiers, enabled=False),
    )
    processor = PartitionProcessor(JourneyEngine(without_profiles, state_ttl_ms=60 * 60_000))
    processor.process(decode_event(click("a", at(0), "cart")))
    processor.process(decode_event(purchase("b", at(1))))
    processor.process(decode_event(tick(at(30))))
    assert "u1" in processor.store  # converted, but de-dup memory is kept for a while
    processor.process(decode_event(tick(at(62))))
    assert "u1" not in processor.store


def test_reorder_buffer_is_bounded(cart_journeys: JourneySet) -> None:
    from dataclasses import replace

    small = replace(cart_journeys, max_pending=3)
    processor = PartitionProcessor(JourneyEngine(small))
    for i in range(10):
        processor.process(decode_event(click(f"e{i}", at(0, i / 1000), "other")))
    assert len(processor.store["u1"].pending) == 3


def test_rebuilt_index_fires_the_same_deadlines(cart_journeys: JourneySet) -> None:
    events = [decode_event(click(f"e{u}", at(u), "cart", user=f"u{u}")) for u in range(5)]
    original = PartitionProcessor(JourneyEngine(cart_journeys))
    for event in events:
        original.process(event)
    restored = PartitionProcessor(JourneyEngine(cart_journeys), store=dict(original.store))
    restored.rebuild_index()
    ids_original = {o.trigger_id for o in original.advance_to(at(100)) if isinstance(o, Trigger)}
    ids_restored = {o.trigger_id for o in restored.advance_to(at(100)) if isinstance(o, Trigger)}
    assert len(ids_original) == 5
    assert ids_original == ids_restored


# Resolution ------------------------------------------------------------------------------------


def resolutions(records: list[TopicRecord]) -> list[Resolution]:
    return [r for r in records if isinstance(r, Resolution)]


def test_coming_back_to_the_missed_step_resolves_the_drop_off(cart_journeys: JourneySet) -> None:
    lines = [click("a", at(0), "cart"), tick(at(40)), click("b", at(50), "checkout"), tick(at(60))]
    records, result = run_all(cart_journeys, lines)
    (dropoff,) = [r for r in records if isinstance(r, Trigger)]
    (resolution,) = resolutions(records)
    assert resolution.trigger_id == dropoff.trigger_id
    assert (resolution.missed_step, resolution.reached_step) == ("checkout", "checkout")
    assert resolution.resolved_by == "b"
    assert resolution.recovered_after_s == 20 * 60
    assert resolution.cause == "indifferent"
    assert records.index(dropoff) < records.index(resolution)
    assert result.report.resolved["cart_to_purchase", "checkout"] == 1


def test_converting_later_also_resolves(cart_journeys: JourneySet) -> None:
    lines = [click("a", at(0), "cart"), tick(at(40)), purchase("p", at(90)), tick(at(100))]
    (resolution,) = resolutions(run_all(cart_journeys, lines)[0])
    assert resolution.reached_step == "purchase"


def test_a_return_resolves_once_and_only_within_the_window(cart_journeys: JourneySet) -> None:
    from dataclasses import replace

    window = replace(cart_journeys, recovery_window_ms=60 * 60_000)  # 1 h after the deadline
    in_time = [
        click("a", at(0), "cart"),
        click("b", at(89), "checkout"),
        click("c", at(89.5), "checkout"),
    ]
    assert len(resolutions(run_all(window, [*in_time, tick(at(200))])[0])) == 1
    too_late = [click("a", at(0), "cart"), click("b", at(91), "checkout"), tick(at(200))]
    assert resolutions(run_all(window, too_late)[0]) == []


def test_an_unrelated_step_does_not_resolve(cart_journeys: JourneySet) -> None:
    # The missed step was checkout; another cart starts a new instance but resolves nothing.
    lines = [click("a", at(0), "cart"), tick(at(40)), click("b", at(50), "cart"), tick(at(51))]
    records, result = run_all(cart_journeys, lines)
    assert resolutions(records) == []
    assert result.report.started["cart_to_purchase"] == 2


def test_resolution_ids_are_derived_from_the_trigger(cart_journeys: JourneySet) -> None:
    from linkwatch.triggers import derive_id

    lines = [click("a", at(0), "cart"), click("b", at(31), "checkout"), tick(at(40))]
    (first,) = resolutions(run_all(cart_journeys, lines)[0])
    (again,) = resolutions(run_all(cart_journeys, lines)[0])
    assert first.resolution_id == again.resolution_id
    assert first.resolution_id == derive_id("resolution", first.trigger_id)
