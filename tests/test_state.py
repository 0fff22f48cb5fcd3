"""Per-user state survives its wire form unchanged (the live service stores it per user)."""

from __future__ import annotations

from linkwatch.codec import decode_event
from linkwatch.engine import JourneyEngine, new_state
from linkwatch.journeys import JourneySet
from linkwatch.state import dump_state, load_state
from tests.builders import at, raw


def test_state_round_trips(default_journeys: JourneySet) -> None:
    engine = JourneyEngine(default_journeys)
    state = new_state()
    for event in [
        raw(event_id="a", ts=at(0), page="cart", campaign_id="c1"),
        raw(event_id="b", ts=at(1), page="content", props={"sku": "A", "n": 2, "ok": True}),
        raw("purchase", event_id="c", ts=at(2), amount="12.30", ref_share_id="s1"),
    ]:
        state = engine.accept(state, decode_event(event), None).state
    advanced = engine.advance("u1", state, at(1, 30))
    assert advanced.state is not None
    state = advanced.state
    assert state.instances  # every part is exercised
    assert state.pending
    assert state.profile is not None
    assert load_state(dump_state(state, partition=3)) == (3, state)


def test_state_is_compact(default_journeys: JourneySet) -> None:
    engine = JourneyEngine(default_journeys)
    state = engine.accept(new_state(), decode_event(raw(event_id="a", page="cart")), None).state
    advanced = engine.advance("u1", state, at(0, 1))
    assert advanced.state is not None
    size = len(dump_state(advanced.state))
    assert size < 600, size  # an open cart instance, de-dup memory and the profile


def test_stored_context_and_published_trigger_context_have_the_same_fields() -> None:
    # Two forms on purpose (compact positional state, documented contract); never drifting.
    from linkwatch.state import Context
    from linkwatch.triggers import TriggerContext

    assert Context._fields == tuple(TriggerContext.model_fields)
