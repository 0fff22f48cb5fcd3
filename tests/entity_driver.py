"""A reference driver for entity logic: the contract of `signals.EntityLogic`, spelled out as
plainly as possible. Logic tests use it; the real entity stage is checked against it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from pydantic import BaseModel

from linkwatch.signals import EntityLogic, EntityOutput, EntityStep, Measure, Published, Signal


def drive_entity(
    logic: EntityLogic, entity: str, signals: Iterable[Signal], until: int
) -> tuple[Any | None, list[EntityOutput]]:
    """Run one entity's signals through `logic` in (ts, signal_id) order, waking it at each
    `next_wake` up to `until` (after signals with ts < wake, before those with ts >= wake).
    Duplicate signal ids are applied once. Returns the final state and every output."""
    ordered = sorted({s.signal_id: s for s in signals}.values(), key=lambda s: (s.ts, s.signal_id))
    state: Any | None = None
    outputs: list[EntityOutput] = []
    index = 0
    handled: int | None = None  # the time just handled: wakes must move past it
    while True:
        wake = logic.next_wake(state) if state is not None else None
        upcoming = ordered[index].ts if index < len(ordered) else None
        if wake is not None and handled is not None:
            assert wake > handled, f"{entity}: next wake {wake} is not after {handled}"
        if wake is not None and wake <= until and (upcoming is None or wake <= upcoming):
            step = logic.wake(entity, state, wake)
            handled = wake
        elif upcoming is not None and upcoming <= until:
            step = logic.apply(entity, state, ordered[index])
            handled = upcoming
            index += 1
        else:
            return state, outputs
        state = step.state
        outputs.extend(step.outputs)
        if state is not None:  # the state must survive persisting
            state = logic.load(logic.dump(state))


def drive(
    logic: EntityLogic, signals: Iterable[Signal], until: int
) -> dict[str, tuple[Any | None, list[EntityOutput]]]:
    """`drive_entity` for every entity the signals address."""
    by_entity: dict[str, list[Signal]] = {}
    for s in signals:
        by_entity.setdefault(s.entity, []).append(s)
    return {e: drive_entity(logic, e, group, until) for e, group in sorted(by_entity.items())}


class Checked:
    """Entity logic with the contract of `signals.EntityLogic` checked at every call."""

    def __init__(self, logic: EntityLogic) -> None:
        self.logic = logic
        self.prefixes = logic.prefixes

    def apply(self, entity: str, state: Any | None, sig: Signal) -> EntityStep:
        step = self._checked(state, sig.ts, lambda: self.logic.apply(entity, state, sig))
        higher = [o.level > sig.level for o in step.outputs if isinstance(o, Signal)]
        assert all(higher), "a signal may only cause signals at higher levels"
        return step

    def wake(self, entity: str, state: Any, at: int) -> EntityStep:
        assert at == self.logic.next_wake(state)
        return self._checked(state, at, lambda: self.logic.wake(entity, state, at))

    def next_wake(self, state: Any) -> int:
        return self.logic.next_wake(state)

    def dump(self, state: Any) -> Any:
        return self.logic.dump(state)

    def load(self, data: Any) -> Any:
        return self.logic.load(data)

    def _checked(self, state: Any | None, now: int, call: Callable[[], EntityStep]) -> EntityStep:
        before = None if state is None else orjson.dumps(self.logic.dump(state))
        step = call()
        if state is not None:
            assert orjson.dumps(self.logic.dump(state)) == before, "the given state was mutated"
        if step.state is not None:
            assert self.logic.next_wake(step.state) > now, "time must move forward"
            wire = orjson.loads(orjson.dumps(self.logic.dump(step.state)))  # JSON-safe
            assert self.logic.load(wire) == step.state
        for output in step.outputs:
            if isinstance(output, Published):
                assert isinstance(output.record, BaseModel)
                output.record.model_dump_json()
            if isinstance(output, Signal):
                orjson.dumps(dict(output.data))
        return step


def totals(outputs: Iterable[EntityOutput]) -> Counter[tuple[str, tuple[str, ...]]]:
    counted: Counter[tuple[str, tuple[str, ...]]] = Counter()
    for output in outputs:
        if isinstance(output, Measure):
            counted[output.name, output.labels] += output.amount
    return counted
