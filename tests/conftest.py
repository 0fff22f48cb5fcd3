"""Shared fixtures: journey sets and processors."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from linkwatch.engine import JourneyEngine
from linkwatch.journeys import JourneySet, load_journeys, parse_journeys
from linkwatch.partition import PartitionProcessor


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--faults",
        action="store_true",
        help="run the long fault-suite variants (marked `faults`); `make faults` does",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long fault suites run only with --faults; `make test` keeps their fast subsets."""
    if config.getoption("--faults"):
        return
    skip = pytest.mark.skip(reason="long fault suite: run with --faults (make faults)")
    for item in items:
        if item.get_closest_marker("faults"):
            item.add_marker(skip)


@pytest.fixture
def default_journeys() -> JourneySet:
    return load_journeys()


CART_JOURNEY = """
[settings]
allowed_lateness = "10s"

[[journey]]
name = "cart_to_purchase"
exit = [{ kind = "group_chat", action = "leave" }]

  [[journey.step]]
  name = "cart"
  match = { kind = "click", page = "cart" }

  [[journey.step]]
  name = "checkout"
  match = { kind = "click", page = "checkout" }
  within = "30m"
  cause = "indifferent"

  [[journey.step]]
  name = "pay"
  match = { kind = "click", page = "other", "props.step" = "pay" }
  within = "10m"
  cause = "distracted"

  [[journey.step]]
  name = "purchase"
  match = { kind = "purchase" }
  within = "1h"
  cause = "distrust"
"""


@pytest.fixture
def cart_journeys() -> JourneySet:
    return parse_journeys(CART_JOURNEY)


@pytest.fixture
def make_processor() -> Callable[[JourneySet], PartitionProcessor]:
    def make(journeys: JourneySet) -> PartitionProcessor:
        return PartitionProcessor(JourneyEngine(journeys))

    return make
