"""Properties of the engine that must hold for any input (hypothesis)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from linkwatch.codec import decode_event
from linkwatch.engine import JourneyEngine
from linkwatch.events import ClickEvent, format_ts
from linkwatch.journeys import load_journeys, parse_journeys
from linkwatch.partition import PartitionProcessor
from linkwatch.replay import replay_lines
from linkwatch.suppression import SuppressionRules
from linkwatch.triggers import Resolution, TopicRecord, Trigger
from tests.builders import MIN, T0, record
from tests.conftest import CART_JOURNEY

_DEFAULT = load_journeys()
JOURNEY_SETS = {
    "default": _DEFAULT,
    "cart": parse_journeys(CART_JOURNEY),
    # Every suppression rule on, with quiet hours the generated traffic falls into.
    "suppressed": replace(
        _DEFAULT,
        suppression=SuppressionRules(
            frequency_cap=2,
            frequency_window_ms=6 * 60 * MIN,
            cooldown_ms=60 * MIN,
            quiet_start_min=1 * 60,
            quiet_end_min=5 * 60,
            default_timezone="UTC",
            holdout_percent=20.0,
        ),
    ),
}
LATENESS = 10_000

pages = st.sampled_from(["content", "product", "detail", "cart", "checkout", "other", "landing"])
gaps = st.one_of(
    st.integers(0, 20_000),  # seconds apart
    st.integers(0, 45 * MIN),  # around the budgets
    st.integers(0, 8 * 60 * MIN),  # long pauses
)


@st.composite
def user_event(draw: st.DrawFn) -> dict[str, Any]:
    choice = draw(st.sampled_from(["click"] * 6 + ["purchase", "group_chat", "share"]))
    if choice == "click":
        extra: dict[str, Any] = {"page": draw(pages)}
        if draw(st.integers(0, 9)) == 0:
            extra["landing_status"] = draw(st.sampled_from([200, 404, 500]))
        if draw(st.integers(0, 4)) == 0:
            extra["ref_share_id"] = "s1"
        if draw(st.integers(0, 4)) == 0:
            extra["props"] = {"step": "pay"}
        if draw(st.integers(0, 4)) == 0:
            extra["channel"] = "group_chat"
        return record("click", **extra)
    if choice == "group_chat":
        return record("group_chat", action=draw(st.sampled_from(["leave", "message", "join"])))
    return record(choice)


@st.composite
def traffic(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events of a few users, each user's stream in event-time order, merged by time."""
    events = []
    for user in range(draw(st.integers(1, 4))):
        ts = T0 + draw(st.integers(0, 5 * MIN))
        for n in range(draw(st.integers(1, 14))):
            ts += draw(gaps)
            events.append(
                draw(user_event()) | {"user_id": f"u{user}", "event_id": f"u{user}-{n}", "ts": ts}
            )
    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    return events


def run_all(
    events: list[dict[str, Any]], journeys: str, close_open: bool = True
) -> list[TopicRecord]:
    records: list[TopicRecord] = []
    lines = [orjson.dumps(e) for e in events]
    replay_lines(lines, JOURNEY_SETS[journeys], on_trigger=records.append, close_open=close_open)
    return records


def run(events: list[dict[str, Any]], journeys: str, close_open: bool = True) -> list[Trigger]:
    return [r for r in run_all(events, journeys, close_open) if isinstance(r, Trigger)]


def output_id(record: TopicRecord) -> str:
    return record.resolution_id if isinstance(record, Resolution) else record.trigger_id


def arrival_order(events: list[dict[str, Any]], jitters: list[int]) -> list[dict[str, Any]]:
    """Reorder arrivals: each event may arrive up to half the allowed lateness after its time.
    No event can then be late, so event time alone must decide the outcome."""
    keyed = [(e["ts"] + j, i) for i, (e, j) in enumerate(zip(events, jitters, strict=False))]
    return [events[i] for _, i in sorted(keyed)]


journey_names = st.sampled_from(sorted(JOURNEY_SETS))


@settings(max_examples=150, deadline=None)
@given(traffic(), journey_names, st.booleans())
def test_same_input_same_outputs(events: list[dict[str, Any]], js: str, close: bool) -> None:
    assert run_all(events, js, close) == run_all(events, js, close)


@settings(max_examples=200, deadline=None)
@given(traffic(), journey_names, st.data())
def test_interleaving_and_disorder_within_lateness_do_not_change_trigger_ids(
    events: list[dict[str, Any]], js: str, data: st.DataObject
) -> None:
    jitter = st.lists(st.integers(0, LATENESS // 2), min_size=len(events), max_size=len(events))
    reordered = arrival_order(events, data.draw(jitter))
    for close_open in (False, True):
        expected = {output_id(r) for r in run_all(events, js, close_open)}
        assert {output_id(r) for r in run_all(reordered, js, close_open)} == expected


@settings(max_examples=150, deadline=None)
@given(
    traffic(),
    st.lists(st.integers(0, 29 * MIN), min_size=3, max_size=3),  # each under its budget
)
def test_a_user_who_always_advances_in_time_gets_no_drop_off(
    noise: list[dict[str, Any]], gaps_ms: list[int]
) -> None:
    ts = T0 + 60 * MIN
    walk = [record("click", page="cart", event_id="w0", user_id="walker", ts=ts)]
    pay_budget = 9 * MIN  # pay must follow checkout within 10m
    for n, (page, props) in enumerate([("checkout", {}), ("other", {"step": "pay"})], start=1):
        ts += gaps_ms[n - 1] if page == "checkout" else min(gaps_ms[n - 1], pay_budget)
        walk.append(
            record("click", page=page, props=props, event_id=f"w{n}", user_id="walker", ts=ts)
        )
    walk.append(record("purchase", event_id="w3", user_id="walker", ts=ts + gaps_ms[2]))
    events = sorted(noise + walk, key=lambda e: (e["ts"], e["event_id"]))
    triggers = run(events, "cart", close_open=True)
    assert not [t for t in triggers if t.user_id == "walker"]


@settings(max_examples=200, deadline=None)
@given(traffic(), journey_names)
def test_every_drop_off_names_a_step_the_user_really_reached(
    events: list[dict[str, Any]], js: str
) -> None:
    journeys = JOURNEY_SETS[js]
    decoded = [decode_event(orjson.dumps(e)) for e in events]
    for trigger in run(events, js, close_open=True):
        if trigger.type != "dropoff":
            continue
        assert trigger.journey is not None
        journey = journeys.by_name(trigger.journey)
        names = [s.name for s in journey.steps]
        reached = journey.steps[names.index(trigger.last_step or "")]
        missed = journey.steps[names.index(trigger.missed_step or "")]
        assert names.index(missed.name) == names.index(reached.name) + 1
        witnesses = [
            e
            for e in decoded
            if e.user_id == trigger.user_id
            and format_ts(e.ts) == trigger.last_step_at
            and reached.matcher.matches(e)
            and not (isinstance(e, ClickEvent) and (e.landing_status or 0) >= 400)
        ]
        assert witnesses, f"{trigger.user_id} never reached {reached.name}"
        assert trigger.last_step_at is not None
        assert trigger.deadline is not None


@settings(max_examples=200, deadline=None)
@given(traffic(), journey_names)
def test_every_resolution_follows_its_drop_off_and_reaches_the_missed_step(
    events: list[dict[str, Any]], js: str
) -> None:
    records = run_all(events, js, close_open=True)
    emitted: dict[str, Trigger] = {}
    resolved: set[str] = set()
    for output in records:
        if isinstance(output, Trigger):
            emitted[output.trigger_id] = output
            continue
        dropoff = emitted[output.trigger_id]  # emitted before it
        assert dropoff.type == "dropoff"
        assert (dropoff.user_id, dropoff.journey) == (output.user_id, output.journey)
        assert output.missed_step == dropoff.missed_step
        steps = [s.name for s in JOURNEY_SETS[js].by_name(output.journey).steps]
        assert steps.index(output.reached_step) >= steps.index(output.missed_step)
        assert output.recovered_after_s >= 0
        assert output.trigger_id not in resolved  # at most once
        resolved.add(output.trigger_id)


@settings(max_examples=200, deadline=None)
@given(traffic(), journey_names)
def test_how_far_the_watermark_jumps_at_a_time_does_not_change_what_is_published(
    events: list[dict[str, Any]], js: str
) -> None:
    """Live, a partition's watermark moves in coarse jumps (a lagging topic holds it back,
    then an idle clock releases it); replay moves it event by event. Same outputs."""
    fine = {output_id(r) for r in run_all(events, js, close_open=True)}
    journeys = JOURNEY_SETS[js]
    # A second declared source that never reports holds the watermark back until the end.
    held_back = PartitionProcessor(JourneyEngine(journeys), sources=["events", "silent"])
    outputs = []
    for event in events:
        outputs.extend(held_back.process(decode_event(orjson.dumps(event)), "events").outputs)
    assert held_back.watermark is None
    outputs.extend(held_back.flush(close_open=True))
    coarse = {output_id(o) for o in outputs if isinstance(o, Trigger | Resolution)}
    assert coarse == fine


def test_properties_see_drop_offs_at_all() -> None:
    """Guard against a vacuous property: the generator does produce drop-offs."""
    events = [
        record("click", page="cart", event_id="a", user_id="u", ts=T0),
        record("click", page="other", event_id="b", user_id="v", ts=T0 + 90 * MIN),
    ]
    assert [t.type for t in run(events, "cart")] == ["dropoff"]
