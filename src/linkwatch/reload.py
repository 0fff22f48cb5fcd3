"""Reloading journeys while running: what changed between two configurations, and retiring the
open instances a change invalidates. Pure: the shell decides when (see `hotreload`, `service`).

A journey *changed* when anything that decides matching or budgets differs: its steps' names,
matches, `within` budgets, causes or order, or its exits. Its description and remedies do not
count: running instances simply use the new text. An open instance of a removed or changed
journey cannot go on under the new definition (its step index and deadline belong to the old
one), so it ends as `retired`, without a trigger, and a drop-off of that journey still waiting
for its user to return is forgotten: no resolution will follow it.

A journey's `Shape` is what the comparison needs, small enough to be stored beside a
partition's progress, so states written under an older configuration (before a restart or a
rebalance) are retired the same way when they are loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

from linkwatch.engine import Transition
from linkwatch.journeys import Journey, JourneySet, Matcher
from linkwatch.state import UserState

# The step name of a retired instance whose old definition is unknown.
UNKNOWN_STEP = "(unknown)"


class Shape(NamedTuple):
    digest: str  # stable hash of everything that decides matching and budgets
    steps: tuple[str, ...]  # step names: what a retired instance reports as its last step


Shapes = Mapping[str, Shape]  # journey name → shape


class JourneyChanges(NamedTuple):
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    @property
    def retiring(self) -> frozenset[str]:
        """The journeys whose open instances end."""
        return frozenset(self.removed) | frozenset(self.changed)


def shapes_of(journeys: JourneySet) -> dict[str, Shape]:
    return {journey.name: shape_of(journey) for journey in journeys.journeys}


def shape_of(journey: Journey) -> Shape:
    steps = [
        (step.name, _matcher_key(step.matcher), step.within_ms, step.cause and step.cause.value)
        for step in journey.steps
    ]
    # Exits are alternatives: their order does not matter.
    exits = sorted(_matcher_key(matcher) for matcher in journey.exits)
    digest = hashlib.blake2b(repr((steps, exits)).encode(), digest_size=8).hexdigest()
    return Shape(digest, tuple(step.name for step in journey.steps))


def _matcher_key(matcher: Matcher) -> str:
    """Canonical text of a matcher: conditions are all required, so their order does not
    matter; reprs keep it stable across processes (it is persisted)."""
    conditions = sorted(
        repr(
            (
                c.field,
                c.in_props,
                c.exists,
                None if c.allowed is None else sorted(repr(v) for v in c.allowed),
            )
        )
        for c in matcher.conditions
    )
    return repr((sorted(matcher.kinds), conditions))


def diff(old: Shapes, new: Shapes) -> JourneyChanges:
    return JourneyChanges(
        added=tuple(sorted(new.keys() - old.keys())),
        removed=tuple(sorted(old.keys() - new.keys())),
        changed=tuple(
            sorted(name for name in old.keys() & new.keys() if old[name].digest != new[name].digest)
        ),
    )


def retire(state: UserState, old: Shapes, new: Shapes) -> tuple[UserState, list[Transition]]:
    """End what `state` (written under `old`) holds of journeys that `new` removed or changed:
    open instances become `retired` transitions (in journey-name order) and their drop-off
    memory (awaiting a return, withheld by suppression) is dropped. A journey that `old` does
    not know counts as changed. Returns `state` itself when nothing is affected."""

    def outdated(name: str) -> bool:
        before, after = old.get(name), new.get(name)
        return before is None or after is None or before.digest != after.digest

    ending = sorted(name for name in state.instances if outdated(name))
    stale_awaiting = any(outdated(name) for name in state.awaiting)
    stale_withheld = any(outdated(name) for name in state.delivery.withheld)
    if not (ending or stale_awaiting or stale_withheld):
        return state, []
    transitions = [
        Transition(name, "retired", _step_name(old.get(name), state.instances[name].step))
        for name in ending
    ]
    delivery = state.delivery
    if stale_withheld:
        withheld = {n: entry for n, entry in delivery.withheld.items() if not outdated(n)}
        delivery = delivery._replace(withheld=withheld)
    # Held triggers stay: they are drop-offs already decided, waiting only for quiet hours.
    retired = state._replace(
        instances={n: i for n, i in state.instances.items() if n not in ending},
        awaiting={n: a for n, a in state.awaiting.items() if not outdated(n)},
        delivery=delivery,
    )
    return retired, transitions


def _step_name(shape: Shape | None, index: int) -> str:
    if shape is None or not 0 <= index < len(shape.steps):
        return UNKNOWN_STEP
    return shape.steps[index]


def dump_shapes(shapes: Shapes) -> dict[str, list[Any]]:
    """JSON-safe form, for storing beside a partition's progress."""
    return {name: [shape.digest, list(shape.steps)] for name, shape in shapes.items()}


def load_shapes(data: Mapping[str, Any]) -> dict[str, Shape]:
    return {name: Shape(digest, tuple(steps)) for name, (digest, steps) in data.items()}
