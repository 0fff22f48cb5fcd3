"""The journey engine: pure functions of (per-user state, event or watermark) → (state, outputs).

No clock, no I/O, no Faust: the same engine runs in `linkwatch replay` and in the live worker.

Event time decides. An accepted event is not applied at once: it waits in the user's reorder
buffer until the watermark passes it, and buffered events are applied in (event time, event_id)
order. So the outcome depends only on which events arrived in time, never on the order in
which they arrived. Dead ends depend on one event alone and are emitted on arrival.
"""

from __future__ import annotations

import bisect
from enum import StrEnum
from typing import Final, Literal, NamedTuple

from linkwatch.events import Event, format_ts, is_dead_end
from linkwatch.journeys import Journey, JourneySet
from linkwatch.state import (
    EMPTY_INSTANCES,
    Context,
    Instance,
    UserState,
    event_id_hash,
    event_order,
)
from linkwatch.triggers import REMEDIES, Cause, Trigger, TriggerContext, derive_id

# Idle users (no open instance, nothing buffered) keep their de-dup memory this long in event
# time after their newest event, then their state is dropped so finished journeys cost nothing.
DEFAULT_STATE_TTL_MS: Final = 3_600_000

Outcome = Literal["started", "reached", "converted", "exited", "dropped_off"]


class Transition(NamedTuple):
    """A journey instance moved. `step` is the step reached, or for a drop-off the step missed."""

    journey: str
    outcome: Outcome
    step: str
    cause: Cause | None = None


Output = Trigger | Transition


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"


class Accepted(NamedTuple):
    state: UserState
    outputs: list[Output]
    verdict: Verdict


class Advanced(NamedTuple):
    state: UserState | None  # None: nothing left worth keeping for this user
    outputs: list[Output]


def new_state() -> UserState:
    return UserState(EMPTY_INSTANCES, (), (), 0)


class JourneyEngine:
    """Applies a `JourneySet` to one user's state. Stateless itself; safe to share."""

    def __init__(self, journeys: JourneySet, state_ttl_ms: int = DEFAULT_STATE_TTL_MS) -> None:
        self.journeys = journeys
        self.state_ttl_ms = state_ttl_ms
        # Per kind, only the journeys that can react to it: the hot path skips the rest.
        self._by_kind: dict[str, tuple[Journey, ...]] = {}
        for journey in journeys.journeys:
            for kind in journey.kinds:
                self._by_kind[kind] = (*self._by_kind.get(kind, ()), journey)

    # -- arrival -------------------------------------------------------------------------------

    def accept(self, state: UserState, event: Event, watermark: int | None) -> Accepted:
        """An event arrives. De-duplicate, classify as late or buffer it; emit dead ends now."""
        id_hash = event_id_hash(event.event_id)
        if id_hash in state.recent:
            return Accepted(state, [], Verdict.DUPLICATE)
        recent = (*state.recent[-(self.journeys.dedup_window - 1) :], id_hash)
        outputs: list[Output] = [dead_end_trigger(event)] if is_dead_end(event) else []
        last_seen = max(state.last_seen, event.ts)
        if watermark is not None and event.ts <= watermark:
            # Its moment has passed: deadlines up to the watermark have already been decided.
            return Accepted(
                state._replace(recent=recent, last_seen=last_seen), outputs, Verdict.LATE
            )
        pending = list(state.pending)
        bisect.insort(pending, event, key=event_order)
        new = UserState(state.instances, tuple(pending), recent, last_seen)
        if len(pending) > self.journeys.max_pending:
            # Bound the buffer: a flood from one user is applied early, oldest first.
            oldest, rest = pending[0], tuple(pending[1:])
            new, applied = self._apply(new._replace(pending=rest), oldest)
            outputs.extend(applied)
        return Accepted(new, outputs, Verdict.ACCEPTED)

    # -- time ----------------------------------------------------------------------------------

    def advance(self, user_id: str, state: UserState, watermark: int) -> Advanced:
        """The watermark reached `watermark`: apply buffered events up to it, in order, then
        fire every deadline at or before it."""
        outputs: list[Output] = []
        pending = state.pending
        applied = 0
        while applied < len(pending) and pending[applied].ts <= watermark:
            state, out = self._apply(state, pending[applied])
            outputs.extend(out)
            applied += 1
        if applied:
            state = state._replace(pending=pending[applied:])
        expired = [name for name, inst in state.instances.items() if inst.deadline <= watermark]
        if expired:
            instances = dict(state.instances)
            for name in expired:
                outputs.extend(self._drop_off(name, instances.pop(name), user_id))
            state = state._replace(instances=instances)
        if self.is_idle(state) and state.last_seen + self.state_ttl_ms <= watermark:
            return Advanced(None, outputs)
        return Advanced(state, outputs)

    def next_wakeup(self, state: UserState) -> int | None:
        """The earliest watermark at which `advance` would do something for this user."""
        times = [inst.deadline for inst in state.instances.values()]
        if state.pending:
            times.append(state.pending[0].ts)
        if not times:
            return state.last_seen + self.state_ttl_ms
        return min(times)

    @staticmethod
    def is_idle(state: UserState) -> bool:
        return not state.instances and not state.pending

    # -- applying one event in event-time order ------------------------------------------------

    def _apply(self, state: UserState, event: Event) -> tuple[UserState, list[Output]]:
        if is_dead_end(event):
            return state, []  # the user never saw the page: a failed hop reaches no step
        journeys = self._by_kind.get(event.kind)
        if not journeys:
            return state, []
        outputs: list[Output] = []
        instances: dict[str, Instance] | None = None  # copied on first write
        current = state.instances
        for journey in journeys:
            inst = current.get(journey.name)
            if inst is not None and event.ts > inst.deadline:
                # Event time decides: the budget ran out before this event happened.
                if instances is None:
                    instances = dict(current)
                    current = instances
                del instances[journey.name]
                outputs.extend(self._drop_off(journey.name, inst, event.user_id))
                inst = None
            replacement = self._step(journey, inst, event, outputs)
            if replacement is not inst:
                if instances is None:
                    instances = dict(current)
                    current = instances
                if replacement is None:
                    del instances[journey.name]
                else:
                    instances[journey.name] = replacement
        if instances is not None:
            state = state._replace(instances=instances)
        return state, outputs

    def _step(
        self, journey: Journey, inst: Instance | None, event: Event, outputs: list[Output]
    ) -> Instance | None:
        steps = journey.steps
        if inst is None:
            if steps[0].matcher.matches(event):
                outputs.append(Transition(journey.name, "started", steps[0].name))
                return Instance(
                    0, event.event_id, event.ts, event.ts + steps[1].within_ms, Context.of(event)
                )
            return None
        last = len(steps) - 1
        for index in range(last, inst.step, -1):  # the furthest later step wins
            if steps[index].matcher.matches(event):
                outputs.append(Transition(journey.name, "reached", steps[index].name))
                if index == last:
                    outputs.append(Transition(journey.name, "converted", steps[index].name))
                    return None
                return Instance(
                    index,
                    inst.started_by,
                    event.ts,
                    event.ts + steps[index + 1].within_ms,
                    Context.of(event),
                )
        for exit_matcher in journey.exits:
            if exit_matcher.matches(event):
                outputs.append(Transition(journey.name, "exited", steps[inst.step].name))
                return None
        return inst

    def _drop_off(self, journey_name: str, inst: Instance, user_id: str) -> list[Output]:
        journey = self.journeys.by_name(journey_name)
        missed = journey.steps[inst.step + 1]
        cause = missed.cause or Cause.DISTRACTED
        trigger = Trigger(
            trigger_id=derive_id("dropoff", journey.name, user_id, inst.started_by, missed.name),
            type="dropoff",
            journey=journey.name,
            user_id=user_id,
            last_step=journey.steps[inst.step].name,
            missed_step=missed.name,
            cause=cause,
            remedy=missed.remedy or REMEDIES[cause],
            event_time=format_ts(inst.deadline),
            deadline=format_ts(inst.deadline),
            last_step_at=format_ts(inst.reached_at),
            started_by=inst.started_by,
            context=TriggerContext(**inst.context._asdict()),
        )
        return [Transition(journey.name, "dropped_off", missed.name, cause), trigger]


def dead_end_trigger(event: Event) -> Trigger:
    context = Context.of(event)
    return Trigger(
        trigger_id=derive_id("dead_end", event.user_id, event.event_id),
        type="dead_end",
        journey=None,
        user_id=event.user_id,
        last_step=None,
        missed_step=None,
        cause=Cause.DEAD_END,
        remedy=REMEDIES[Cause.DEAD_END],
        event_time=format_ts(event.ts),
        deadline=None,
        last_step_at=None,
        started_by=event.event_id,
        context=TriggerContext(**context._asdict()),
    )
