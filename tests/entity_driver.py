"""A reference driver for entity logic: the contract of `signals.EntityLogic`, spelled out as
plainly as possible. Logic tests use it; the real entity stage is checked against it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from linkwatch.signals import EntityLogic, EntityOutput, Signal


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
    while True:
        wake = logic.next_wake(state) if state is not None else None
        upcoming = ordered[index].ts if index < len(ordered) else None
        if wake is not None and wake <= until and (upcoming is None or wake <= upcoming):
            step = logic.wake(entity, state, wake)
        elif upcoming is not None and upcoming <= until:
            step = logic.apply(entity, state, ordered[index])
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
