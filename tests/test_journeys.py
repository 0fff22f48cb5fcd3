"""Journey files: the default loads; every kind of mistake is refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from linkwatch.codec import decode_event
from linkwatch.errors import ConfigError
from linkwatch.journeys import load_journeys, parse_duration, parse_journeys
from tests.builders import raw
from tests.conftest import CART_JOURNEY


def test_default_journeys_cover_the_domain() -> None:
    journeys = load_journeys()
    names = {j.name for j in journeys.journeys}
    assert names == {
        "content_to_purchase",
        "cart_to_purchase",
        "share_click_to_purchase",
        "group_link_to_purchase",
    }
    causes = {s.cause for j in journeys.journeys for s in j.steps[1:]}
    assert {c.value for c in causes if c} == {
        "unfamiliar",
        "not_understood",
        "indifferent",
        "distrust",
        "distracted",
    }
    assert journeys.allowed_lateness_ms == 10_000


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("10s", 10_000),
        ("30m", 1_800_000),
        ("1h30m", 5_400_000),
        ("2d", 172_800_000),
        ("250ms", 250),
    ],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "10", "10x", "m", "1h 30", "-5m", "0s", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def _broken(old: str, new: str) -> str:
    assert old in CART_JOURNEY
    return CART_JOURNEY.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_broken('within = "30m"', 'within = "30x"'), "step[1] 'checkout' → within"),
        (_broken('within = "30m"\n', ""), "'within' is required"),
        (_broken('cause = "indifferent"', 'cause = "bored"'), "cause"),
        (_broken('cause = "indifferent"\n', ""), "'cause' is required"),
        (_broken('cause = "indifferent"', 'cause = "dead_end"'), "reserved"),
        (_broken('page = "cart"', 'page = "carts"'), "value 'carts' is not one of"),
        (_broken('kind = "purchase"', 'kind = "order"'), "kind 'order' is not one of"),
        (_broken('page = "checkout"', "amount = 3"), "no event kind click has a field 'amount'"),
        (
            _broken(
                'kind = "click", page = "checkout"', 'kind = ["click", "purchase"], page = "cart"'
            ),
            "field 'page' does not exist on kind purchase",
        ),
        (_broken('page = "checkout"', 'colour = "red"'), "has a field 'colour'"),
        (_broken('name = "checkout"', 'name = "cart"'), "duplicate step name"),
        (_broken('name = "checkout"', 'name = "Check Out"'), "step[1]"),
        (
            _broken('name = "cart"\n  match', 'name = "cart"\n  within = "1m"\n  match'),
            "first step",
        ),
        (
            _broken("[[journey]]", "[[journey]]\ncolour = 1"),
            "journey[0] 'cart_to_purchase' → colour",
        ),
        (_broken('allowed_lateness = "10s"', 'allowed_lateness = "soon"'), "allowed_lateness"),
        (CART_JOURNEY + CART_JOURNEY.split("[settings]")[1].split("\n", 2)[2], "duplicate journey"),
        ("[[journey]\nname=", "not valid TOML"),
        ("[settings]\n", "journey"),
    ],
)
def test_config_errors_name_the_place(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_journeys(text, source="j.toml")
    assert expected in str(info.value)
    assert str(info.value).startswith("j.toml")


def test_a_journey_needs_two_steps() -> None:
    text = '[[journey]]\nname = "solo"\n[[journey.step]]\nname = "a"\nmatch = { kind = "click" }\n'
    with pytest.raises(ConfigError, match="step"):
        parse_journeys(text)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_journeys(tmp_path / "nope.toml")


def test_match_on_values_lists_props_and_existence() -> None:
    journeys = parse_journeys(
        """
[[journey]]
name = "j"
  [[journey.step]]
  name = "a"
  match = { kind = "click", page = ["cart", "checkout"], "props.sku" = "A1" }
  [[journey.step]]
  name = "b"
  match = { ref_share_id = { exists = true } }
  within = "1m"
  cause = "distracted"
  [[journey.step]]
  name = "c"
  match = { kind = "click", "props.gift" = true }
  within = "1m"
  cause = "distracted"
"""
    )
    first, second, third = (s.matcher for s in journeys.journeys[0].steps)
    assert first.matches(decode_event(raw(page="cart", props={"sku": "A1"})))
    assert first.matches(decode_event(raw(page="checkout", props={"sku": "A1"})))
    assert not first.matches(decode_event(raw(page="product", props={"sku": "A1"})))
    assert not first.matches(decode_event(raw(page="cart", props={"sku": "B2"})))
    assert not first.matches(decode_event(raw(page="cart")))
    # A field only some kinds have narrows the step to those kinds (click, purchase).
    assert second.kinds == frozenset({"click", "purchase"})
    assert second.matches(decode_event(raw("purchase", ref_share_id="s9")))
    assert not second.matches(decode_event(raw()))
    # True never matches 1.
    assert third.matches(decode_event(raw(props={"gift": True})))
    assert not third.matches(decode_event(raw(props={"gift": 1})))
