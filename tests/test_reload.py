"""Reloading journeys: what counts as a change, retiring open instances, and a partition
switching to a new configuration."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkwatch.codec import decode_event
from linkwatch.engine import JourneyEngine, Output, Transition
from linkwatch.events import Event, parse_ts
from linkwatch.journeys import JourneySet, load_journeys, parse_journeys
from linkwatch.partition import PartitionProcessor
from linkwatch.reload import (
    UNKNOWN_STEP,
    diff,
    dump_shapes,
    load_shapes,
    retire,
    shapes_of,
)
from linkwatch.state import Awaiting, UserState, load_state
from linkwatch.store import PartitionStore
from linkwatch.suppression import Held, Withheld
from linkwatch.triggers import Resolution, Trigger
from tests.builders import at, raw

SETTINGS = """
[settings]
allowed_lateness = "10s"
recovery_window = "1d"
"""

BROWSE = """
[[journey]]
name = "browse"
description = "from a product page to checkout"
exit = [{ kind = "group_chat", action = "leave" }, { kind = "purchase" }]

  [[journey.step]]
  name = "product"
  match = { kind = "click", page = ["product", "detail"] }

  [[journey.step]]
  name = "cart"
  match = { kind = "click", page = "cart", channel = "web" }
  within = "30m"
  cause = "indifferent"

  [[journey.step]]
  name = "checkout"
  match = { kind = "click", page = "checkout" }
  within = "45m"
  cause = "distracted"
"""

CHECKOUT = """
[[journey]]
name = "buy"

  [[journey.step]]
  name = "cart"
  match = { kind = "click", page = "cart" }

  [[journey.step]]
  name = "purchase"
  match = { kind = "purchase" }
  within = "1h"
  cause = "distrust"
"""


def config(*parts: str) -> JourneySet:
    return parse_journeys(SETTINGS + "".join(parts))


BOTH = config(BROWSE, CHECKOUT)
WITHOUT_BROWSE = config(CHECKOUT)


def click(event_id: str, minutes: float, page: str, user: str = "u1") -> Event:
    return decode_event(raw(event_id=event_id, user_id=user, ts=at(minutes), page=page))


def purchase(event_id: str, minutes: float, user: str = "u1") -> Event:
    return decode_event(raw("purchase", event_id=event_id, user_id=user, ts=at(minutes)))


def feed(processor: PartitionProcessor, *events: Event) -> list[Output]:
    outputs: list[Output] = []
    for event in events:
        outputs.extend(processor.process(event).outputs)
    return outputs


def tick(processor: PartitionProcessor, minutes: float) -> list[Output]:
    """Move event time on with another user's unrelated event (offline watermark)."""
    return feed(processor, click(f"tick-{minutes}", minutes, "other", user="clock"))


def of_journey(outputs: list[Output], journey: str) -> list[Output]:
    return [o for o in outputs if getattr(o, "journey", None) == journey]


# -- what counts as a change -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('within = "30m"', 'within = "20m"'),  # a budget
        ('cause = "indifferent"', 'cause = "distrust"'),
        ('name = "cart"', 'name = "basket"'),  # a step's name
        ('"detail"] }', '"detail"], channel = "web" }'),  # a match condition more
        ('page = ["product", "detail"]', 'page = "product"'),  # a match value
        ('action = "leave"', 'action = "join"'),  # an exit
    ],
)
def test_a_change_to_matching_or_budgets_changes_the_journey(old: str, new: str) -> None:
    assert BROWSE.count(old) == 1
    changes = diff(shapes_of(BOTH), shapes_of(config(BROWSE.replace(old, new), CHECKOUT)))
    assert changes.changed == ("browse",)
    assert (changes.added, changes.removed) == ((), ())


def test_a_change_to_step_order_changes_the_journey() -> None:
    head, product, cart, checkout = BROWSE.split("  [[journey.step]]")
    reordered = "  [[journey.step]]".join([head, product, checkout, cart])
    changes = diff(shapes_of(BOTH), shapes_of(config(reordered, CHECKOUT)))
    assert changes.changed == ("browse",)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('description = "from a product page to checkout"', 'description = "new words"'),
        ('cause = "indifferent"', 'cause = "indifferent"\n  remedy = "send a coupon"'),
        ('page = "cart", channel = "web" }', 'channel = "web", page = "cart" }'),
        ('["product", "detail"]', '["detail", "product"]'),
        (
            '{ kind = "group_chat", action = "leave" }, { kind = "purchase" }',
            '{ kind = "purchase" }, { action = "leave", kind = "group_chat" }',
        ),
        ("[settings]", "[suppression]\nholdout_percent = 10\n\n[settings]"),
    ],
)
def test_texts_order_and_settings_do_not_change_a_journey(old: str, new: str) -> None:
    edited = (SETTINGS + BROWSE).replace(old, new)
    assert edited != SETTINGS + BROWSE
    changes = diff(shapes_of(BOTH), shapes_of(parse_journeys(edited + CHECKOUT)))
    assert changes == ((), (), ())


def test_added_and_removed_journeys_are_named() -> None:
    changes = diff(shapes_of(config(BROWSE)), shapes_of(config(CHECKOUT)))
    assert (changes.added, changes.removed, changes.changed) == (("buy",), ("browse",), ())
    assert changes.retiring == {"browse"}


def test_shapes_are_stable_across_processes() -> None:
    """They are stored with a partition's progress: string hashing (and so set order) varies
    between processes, the shapes must not."""
    code = (
        "import orjson; from linkwatch.journeys import load_journeys;"
        "from linkwatch.reload import dump_shapes, shapes_of;"
        "print(orjson.dumps(dump_shapes(shapes_of(load_journeys()))).decode())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env=os.environ | {"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1
    (printed,) = outputs
    assert load_shapes(orjson.loads(printed)) == shapes_of(load_journeys())


def test_shapes_round_trip_through_json() -> None:
    shapes = shapes_of(BOTH)
    assert load_shapes(orjson.loads(orjson.dumps(dump_shapes(shapes)))) == shapes


# -- retiring one user's state -------------------------------------------------------------------


def state_in_both() -> UserState:
    """A user with an open instance of both journeys, a drop-off of `browse` awaiting their
    return and kept back by suppression, and a held trigger of it."""
    p = PartitionProcessor(JourneyEngine(BOTH))
    feed(p, click("a", 0, "product"), click("b", 1, "cart"))
    tick(p, 2)
    held = Held(at(600), _any_trigger())
    return p.store["u1"]._replace(
        awaiting={"browse": Awaiting("t-old", 2, at(-60), at(600))},
        delivery=p.store["u1"].delivery._replace(
            withheld={"browse": ("t-old", "holdout"), "buy": ("t-buy", "holdout")}, held=(held,)
        ),
    )


def _any_trigger() -> Trigger:
    p = PartitionProcessor(JourneyEngine(BOTH))
    feed(p, click("x", 0, "product", user="other"))
    (trigger,) = [o for o in p.flush(close_open=True) if isinstance(o, Trigger)]
    return trigger


def test_retiring_ends_open_instances_at_their_last_step_and_forgets_their_drop_off() -> None:
    state = state_in_both()
    assert state.instances["browse"].step == 1  # reached the cart
    retired, transitions = retire(state, shapes_of(BOTH), shapes_of(WITHOUT_BROWSE))
    assert transitions == [Transition("browse", "retired", "cart")]
    assert set(retired.instances) == {"buy"}
    assert retired.instances["buy"] is state.instances["buy"]
    assert dict(retired.awaiting) == {}
    assert dict(retired.delivery.withheld) == {"buy": ("t-buy", "holdout")}
    # A held trigger was decided before the reload: quiet hours only delay it.
    assert retired.delivery.held == state.delivery.held
    assert (retired.pending, retired.recent, retired.last_seen) == (
        state.pending,
        state.recent,
        state.last_seen,
    )


def test_a_state_untouched_by_the_change_is_returned_as_is() -> None:
    state = state_in_both()
    new = config(BROWSE.replace("from a product page", "from anywhere"), CHECKOUT)
    assert retire(state, shapes_of(BOTH), shapes_of(new)) == (state, [])


def test_an_instance_of_a_journey_the_old_config_does_not_know_is_retired() -> None:
    """States written under a configuration whose shapes were never stored."""
    state = state_in_both()
    retired, transitions = retire(state, shapes_of(WITHOUT_BROWSE), shapes_of(WITHOUT_BROWSE))
    assert transitions == [Transition("browse", "retired", UNKNOWN_STEP)]
    assert set(retired.instances) == {"buy"}


# -- a partition switching configuration -------------------------------------------------------


def test_reconfigure_retires_a_removed_journey_and_never_starts_it_again() -> None:
    p = PartitionProcessor(JourneyEngine(BOTH))
    feed(p, click("a", 0, "product", user="u1"), click("b", 0, "cart", user="u2"))
    tick(p, 1)
    u2 = p.store["u2"]
    assert sorted(p.open_instances()) == [("browse", "product"), ("buy", "cart")]

    outputs = p.reconfigure(JourneyEngine(WITHOUT_BROWSE))

    assert outputs == [Transition("browse", "retired", "product")]
    assert p.store["u2"] is u2  # unchanged journeys keep running untouched
    assert sorted(p.open_instances()) == [("buy", "cart")]
    later = feed(p, click("c", 5, "product", user="u3"))
    later += p.flush(close_open=True)
    assert of_journey(later, "browse") == []
    # Only the journey still configured drops off; the retired one's deadline is gone.
    assert [(t.journey, t.user_id) for t in later if isinstance(t, Trigger)] == [("buy", "u2")]


def test_a_changed_journey_restarts_with_the_next_matching_event_under_its_new_budget() -> None:
    p = PartitionProcessor(JourneyEngine(BOTH))
    feed(p, click("a", 0, "product"))
    tick(p, 1)
    shorter = config(BROWSE.replace('within = "30m"', 'within = "20m"', 1), CHECKOUT)
    assert p.reconfigure(JourneyEngine(shorter)) == [Transition("browse", "retired", "product")]
    outputs = feed(p, click("b", 5, "detail")) + p.flush(close_open=True)
    assert Transition("browse", "started", "product") in outputs
    (trigger,) = [o for o in outputs if isinstance(o, Trigger)]
    assert trigger.started_by == "b"
    assert parse_ts(str(trigger.deadline)) == at(5 + 20)


def test_a_new_journey_starts_with_the_next_matching_event() -> None:
    p = PartitionProcessor(JourneyEngine(WITHOUT_BROWSE))
    feed(p, click("a", 0, "product"))
    assert p.reconfigure(JourneyEngine(BOTH)) == []
    outputs = feed(p, click("b", 1, "product")) + tick(p, 2)
    assert Transition("browse", "started", "product") in outputs


@pytest.mark.parametrize(("reload", "resolutions"), [(False, 1), (True, 0)])
def test_a_changed_journeys_drop_off_is_no_longer_resolved(reload: bool, resolutions: int) -> None:
    p = PartitionProcessor(JourneyEngine(BOTH))
    feed(p, click("a", 0, "product"))
    assert [o.journey for o in tick(p, 40) if isinstance(o, Trigger)] == ["browse"]
    if reload:
        new = config(BROWSE.replace('cause = "indifferent"', 'cause = "distrust"'), CHECKOUT)
        assert p.reconfigure(JourneyEngine(new)) == []  # nothing open: only forgotten
    outputs = feed(p, click("b", 45, "cart")) + tick(p, 50)
    assert len([o for o in outputs if isinstance(o, Resolution)]) == resolutions


def test_new_suppression_rules_apply_from_the_next_event() -> None:
    p = PartitionProcessor(JourneyEngine(BOTH))
    feed(p, click("a", 0, "product"))
    held_out = parse_journeys(
        "[suppression]\nholdout_percent = 100\n" + SETTINGS + BROWSE + CHECKOUT
    )
    assert p.reconfigure(JourneyEngine(held_out)) == []
    outputs = tick(p, 40)
    assert [type(o).__name__ for o in outputs if isinstance(o, Trigger | Withheld)] == ["Withheld"]


def test_a_new_allowed_lateness_applies_from_the_next_event() -> None:
    p = PartitionProcessor(JourneyEngine(BOTH))
    feed(p, click("a", 0, "product"))
    assert p.watermark == at(0) - 10_000
    quicker = parse_journeys(SETTINGS.replace('"10s"', '"1s"') + BROWSE + CHECKOUT)
    assert p.reconfigure(JourneyEngine(quicker)) == []
    feed(p, click("b", 1, "other"))
    assert p.watermark == at(1) - 1_000


def test_reconfigure_writes_back_only_the_states_it_changed() -> None:
    table: dict[bytes, bytes] = {}
    store = PartitionStore(table, 0, {})
    p = PartitionProcessor(JourneyEngine(BOTH), store)
    feed(p, click("a", 0, "product", user="u1"), click("b", 0, "cart", user="u2"))
    tick(p, 1)
    store.flush()
    before = dict(table)
    p.reconfigure(JourneyEngine(WITHOUT_BROWSE))
    assert store.flush() == 1
    assert table[b"u2"] == before[b"u2"]
    assert dict(load_state(table[b"u1"])[1].instances) == {}


def test_states_written_under_another_config_are_retired_when_loaded() -> None:
    """A restart, or a partition taken over from a worker that had not reloaded yet."""
    old = PartitionProcessor(JourneyEngine(BOTH))
    feed(old, click("a", 0, "product"))
    tick(old, 1)
    loaded = PartitionProcessor(JourneyEngine(WITHOUT_BROWSE), dict(old.store))
    engine = loaded.engine
    assert loaded.reconfigure(engine, since=shapes_of(BOTH)) == [
        Transition("browse", "retired", "product")
    ]
    assert loaded.engine is engine
    assert list(loaded.open_instances()) == []


# -- reloading at any moment -------------------------------------------------------------------

PAGES = ["product", "cart", "checkout", "other"]


@st.composite
def traffic(draw: st.DrawFn) -> tuple[list[Event], int]:
    steps = draw(
        st.lists(
            st.tuples(st.integers(0, 2), st.sampled_from([*PAGES, "purchase"]), st.integers(0, 40)),
            max_size=30,
        )
    )
    events: list[Event] = []
    minute = 0
    for index, (user, page, gap) in enumerate(steps):
        minute += gap
        user_id = f"u{user}"
        if page == "purchase":
            events.append(purchase(f"e{index}", minute, user_id))
        else:
            events.append(click(f"e{index}", minute, page, user_id))
    return events, draw(st.integers(0, len(events)))


@settings(max_examples=150, deadline=None)
@given(traffic())
def test_reloading_at_any_point_leaves_other_journeys_as_if_nothing_happened(
    case: tuple[list[Event], int],
) -> None:
    events, split = case
    steady = PartitionProcessor(JourneyEngine(BOTH))
    expected = feed(steady, *events) + steady.flush(close_open=True)

    p = PartitionProcessor(JourneyEngine(BOTH))
    before = feed(p, *events[:split])
    open_browse = [step for journey, step in p.open_instances() if journey == "browse"]
    retired = p.reconfigure(JourneyEngine(WITHOUT_BROWSE))
    after = feed(p, *events[split:]) + p.flush(close_open=True)

    # The same outputs; across users, a jump of the watermark may order them differently.
    assert sorted(map(repr, of_journey(before + retired + after, "buy"))) == sorted(
        map(repr, of_journey(expected, "buy"))
    )
    assert sorted(t.step for t in retired) == sorted(open_browse)
    assert all(t == Transition("browse", "retired", t.step) for t in retired)
    assert of_journey(after, "browse") == []
