"""The journey engine: pure functions of (per-user state, event or watermark) → (state, outputs).

No clock, no I/O, no Faust: the same engine runs in `linkwatch replay` and in the live worker.

Event time decides. An accepted event is not applied at once: it waits in the user's reorder
buffer until the watermark passes it, and buffered events are applied in (event time, event_id)
order. So the outcome depends only on which events arrived in time, never on the order in
which they arrived. Dead ends depend on one event alone and are emitted on arrival.

Beside journeys, each user has a profile (see `profile`): the retention loop's deadlines, fake-
traffic flags and the signals that need the user's history. It changes only when an event is
applied, and its deadlines fire in event-time order with the journeys' drop-offs.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final, Literal, NamedTuple

from linkwatch.events import Event, format_ts, is_dead_end, parse_ts
from linkwatch.journeys import Journey, JourneySet
from linkwatch.profile import PROFILE_TRIGGERS, BotFlagged, FlaggedEvent, Profile, Profiles
from linkwatch.signals import Signal
from linkwatch.state import (
    EMPTY_AWAITING,
    EMPTY_INSTANCES,
    Awaiting,
    Context,
    Instance,
    UserState,
    event_id_hash,
    event_order,
)
from linkwatch.suppression import EMPTY_DELIVERY, Delivery, Suppression, Withheld
from linkwatch.triggers import REMEDIES, Cause, Resolution, Trigger, derive_id

# Idle users (no open instance, nothing buffered) keep their de-dup memory this long in event
# time after their newest event, then their state is dropped so finished journeys cost nothing
# (a user with a profile keeps only the profile, until it expires).
DEFAULT_STATE_TTL_MS: Final = 3_600_000

Outcome = Literal["started", "reached", "converted", "exited", "dropped_off", "retired"]
# How each outcome changes the number of open instances of its journey.
OPEN_CHANGE: Final[Mapping[str, int]] = {
    "started": 1,
    "reached": 0,
    "converted": -1,
    "exited": -1,
    "dropped_off": -1,
    "retired": -1,
}


class Transition(NamedTuple):
    """A journey instance moved. `step` is the step reached, or for a drop-off the step missed."""

    journey: str
    outcome: Outcome
    step: str
    cause: Cause | None = None
    # For a drop-off, its trigger, at the moment it is decided: suppression may hold the
    # trigger itself back until later, or keep it, but what happened happened now.
    trigger: Trigger | None = None


# An `Event` among the outputs has just been applied, in event-time order (late and duplicate
# events never are; a flagged user's events come as `FlaggedEvent` instead). Commerce metrics
# and the entity signals (links, groups, shares) are derived from these. `Signal`s are the
# ones only the user's profile can tell; `BotFlagged` marks a user flagged as fake traffic.
Output = Event | Trigger | Resolution | Transition | Withheld | Signal | BotFlagged | FlaggedEvent


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"


class Accepted(NamedTuple):
    state: UserState
    outputs: list[Output]
    verdict: Verdict
    # A wake-up the caller must schedule for this user, or None when one already scheduled
    # is early enough. Reported here because the engine knows it for free.
    wake: int | None


class Advanced(NamedTuple):
    state: UserState | None  # None: nothing left worth keeping for this user
    outputs: list[Output]
    # When `advance` next has something to do for this user (`next_wakeup`), or None when
    # the state did not change: the wake-up scheduled for it is still pending.
    wake: int | None


def new_state() -> UserState:
    return UserState(EMPTY_INSTANCES, (), (), 0, EMPTY_AWAITING, EMPTY_DELIVERY, None)


_NO_OUTPUTS: Final[list[Output]] = []
# Sentinel from `_advance`: the instance reached its last step.
_CONVERTED: Final = Instance(-1, "", 0, 0, Context())


class JourneyEngine:
    """Applies a `JourneySet` to one user's state. Stateless itself; safe to share."""

    def __init__(self, journeys: JourneySet, state_ttl_ms: int = DEFAULT_STATE_TTL_MS) -> None:
        self.journeys = journeys
        self.state_ttl_ms = state_ttl_ms
        self.suppression = Suppression(journeys.suppression)
        self._suppress = journeys.suppression.active
        self.profiles = Profiles(journeys)
        self._profiles = self.profiles.enabled
        self._profile_ttl_ms = self.profiles.ttl_ms
        self._journey_by_name = {j.name: j for j in journeys.journeys}
        # Per kind, only the journeys that can react to it: the hot path skips the rest.
        self._by_kind: dict[str, tuple[Journey, ...]] = {}
        for journey in journeys.journeys:
            for kind in journey.kinds:
                self._by_kind[kind] = (*self._by_kind.get(kind, ()), journey)

    # -- arrival -------------------------------------------------------------------------------

    def accept(self, state: UserState | None, event: Event, watermark: int | None) -> Accepted:
        """An event arrives. De-duplicate, classify as late or buffer it; emit dead ends now.
        `state` is None for a user with no state yet."""
        is_new = state is None
        if state is None:
            state = new_state()
        id_hash = event_id_hash(event.event_id)
        recent = state.recent
        if id_hash in recent:
            return Accepted(state, _NO_OUTPUTS, Verdict.DUPLICATE, None)
        window = self.journeys.dedup_window
        recent = (*recent[1:], id_hash) if len(recent) >= window else (*recent, id_hash)
        outputs: list[Output] = []
        if is_dead_end(event):
            trigger = dead_end_trigger(event)
            outputs.append(self.suppression.dead_end(trigger) if self._suppress else trigger)
        ts = event.ts
        last_seen = ts if ts > state.last_seen else state.last_seen
        delivery = state.delivery
        if event.tz is not None and event.tz != delivery.tz:
            delivery = delivery._replace(tz=event.tz)  # quiet hours follow the user
        if watermark is not None and ts <= watermark:
            # Its moment has passed: deadlines up to the watermark have already been decided.
            late = state._replace(recent=recent, last_seen=last_seen, delivery=delivery)
            # A later last_seen may move a wake-up later (forgetting, trimming a profile's
            # state): schedule it, or a stale one would find nothing due and end the chain.
            wake = self.next_wakeup(late) if is_new or state.profile is not None else None
            return Accepted(late, outputs, Verdict.LATE, wake)
        pending = _insert(state.pending, event)
        new = UserState(
            state.instances, pending, recent, last_seen, state.awaiting, delivery, state.profile
        )
        wake = ts if pending[0] is event else None
        if len(pending) > self.journeys.max_pending:
            # Bound the buffer: a flood from one user is applied early, oldest first, exactly
            # as `advance` would apply it.
            new = self._apply(new._replace(pending=pending[1:]), pending[0], outputs)
            wake = self.next_wakeup(new)
        return Accepted(new, outputs, Verdict.ACCEPTED, wake)

    # -- time ----------------------------------------------------------------------------------

    def advance(self, user_id: str, state: UserState, watermark: int) -> Advanced:
        """The watermark reached `watermark`: apply buffered events up to it, in order, then
        fire every deadline at or before it."""
        outputs: list[Output] = []
        current = state
        pending = state.pending
        if pending and pending[0].ts <= watermark:
            count = len(pending)
            applied = 0
            while applied < count and pending[applied].ts <= watermark:
                current = self._apply(current, pending[applied], outputs)
                applied += 1
            pending = pending[applied:]
        instances = current.instances
        awaiting = current.awaiting
        delivery = current.delivery
        profile = current.profile
        due = self.profiles.due(profile) if profile is not None else None
        if instances or (due is not None and due <= watermark):
            fired: list[Output] = []
            instances, awaiting, profile, retention = self._fire_due(
                user_id, instances, awaiting, profile, due, watermark + 1, fired
            )
            if retention and profile is not None:
                due = self.profiles.due(profile)
            if fired:
                if self._suppress:
                    delivery, fired = self._decide(delivery, fired, watermark, retention)
                outputs.extend(fired)
        wake = pending[0].ts if pending else None
        for inst in instances.values():
            if wake is None or inst.deadline < wake:
                wake = inst.deadline
        if awaiting:
            gone = [name for name, a in awaiting.items() if a.expires <= watermark]
            if gone:  # the recovery window closed: no resolution any more
                awaiting = {n: a for n, a in awaiting.items() if n not in gone}
            for entry in awaiting.values():
                if wake is None or entry.expires < wake:
                    wake = entry.expires
        if self._suppress and delivery.held:
            delivery, released = self.suppression.release(delivery, watermark)
            outputs.extend(released)
            release = self.suppression.next_release(delivery)
            if release is not None and (wake is None or release < wake):
                wake = release
        recent = current.recent
        if profile is not None and profile.last_active + self._profile_ttl_ms <= watermark:
            profile = None  # a user seen again after this is new
        if wake is None:  # no journey work: keep what is still needed, then forget the user
            forget = self.forget_at(state.last_seen, delivery)
            if profile is None:
                if forget <= watermark:
                    return Advanced(None, outputs, None)
                wake = forget
            elif forget <= watermark:  # keep only the profile (and the timezone)
                recent, delivery = (), _trimmed(delivery)
            elif _remembers(recent, delivery):
                wake = forget
        if profile is not None:
            # Its retention deadline, else its expiry (a deadline never falls after it).
            profile_wake = due if due is not None else profile.last_active + self._profile_ttl_ms
            if wake is None or profile_wake < wake:
                wake = profile_wake
        if (
            pending is state.pending
            and instances is state.instances
            and awaiting is state.awaiting
            and delivery is state.delivery
            and profile is state.profile
            and recent is state.recent
        ):
            # Nothing was due (a stale wake-up): the one scheduled when the state was made is
            # still there, and scheduling another would keep a duplicate alive.
            return Advanced(state, outputs, None if not outputs else wake)
        new = UserState(instances, pending, recent, state.last_seen, awaiting, delivery, profile)
        return Advanced(new, outputs, wake)

    def next_wakeup(self, state: UserState) -> int:
        """The earliest watermark at which `advance` would do something for this user."""
        times = [inst.deadline for inst in state.instances.values()]
        times.extend(entry.expires for entry in state.awaiting.values())
        times.extend(held.release_at for held in state.delivery.held)
        if state.pending:
            times.append(state.pending[0].ts)
        profile = state.profile
        if profile is None:
            return min(times) if times else self.forget_at(state.last_seen, state.delivery)
        if not times and _remembers(state.recent, state.delivery):
            times.append(self.forget_at(state.last_seen, state.delivery))
        times.append(self.profiles.wake(profile))
        return min(times)

    def forget_at(self, last_seen: int, delivery: Delivery) -> int:
        """When an idle user's state is no longer needed: de-dup memory lasts the state TTL,
        suppression memory (cooldowns, the frequency cap's window) as long as its rules. A
        profile is kept apart from this (see `advance`)."""
        forget = last_seen + self.state_ttl_ms
        rules = self.journeys.suppression
        if delivery.cooldowns and rules.cooldown_ms:
            forget = max(forget, max(delivery.cooldowns.values()) + rules.cooldown_ms)
        if delivery.sent and rules.frequency_cap:
            forget = max(forget, max(delivery.sent) + rules.frequency_window_ms)
        return forget

    # -- applying one event in event-time order ------------------------------------------------

    def _apply(self, state: UserState, event: Event, outputs: list[Output]) -> UserState:
        """Apply one event: first what fell due before it (held triggers released, deadlines
        fired), then the event itself (profile, journeys). Appends to `outputs`; the returned
        state keeps `state.pending` as it was."""
        ts = event.ts
        user_id = event.user_id
        instances = state.instances
        awaiting = state.awaiting
        delivery = state.delivery
        profile = state.profile
        suppress = self._suppress
        if suppress and delivery.held:
            # Event time decides here too: a quiet window that ended before this event has
            # released its triggers before the event can resolve them.
            delivery, released = self.suppression.release(delivery, ts)
            outputs.extend(released)
        out: list[Output] = []
        retention = False
        if profile is not None:
            due = self.profiles.due(profile)
            if instances or (due is not None and due < ts):
                # Event time decides: every deadline that passed before this event fired
                # before it, whatever the event concerns, in event-time order.
                instances, awaiting, profile, retention = self._fire_due(
                    user_id, instances, awaiting, profile, due, ts, out
                )
            if profile is not None and profile.last_active + self._profile_ttl_ms < ts:
                profile = None  # forgotten before this event: the user is new again
        elif instances:
            instances, awaiting, _, _ = self._fire_due(
                user_id, instances, awaiting, None, None, ts, out
            )
        observed = None
        if self._profiles:
            observed = self.profiles.observe(profile, event)
            profile = observed.profile
        if observed is not None and observed.flagged:
            if observed.flag is not None and (instances or awaiting):
                # Just flagged: their journeys end here, without triggers or resolutions (the
                # transitions keep the open-instance count right).
                for name in sorted(instances):
                    step = self._journey_by_name[name].steps[instances[name].step].name
                    out.append(Transition(name, "retired", step))
                instances, awaiting = EMPTY_INSTANCES, EMPTY_AWAITING
        elif not is_dead_end(event):  # a dead end: the user never saw the page, no step reached
            journeys = self._by_kind.get(event.kind)
            if journeys:
                instances, awaiting = self._journeys(journeys, instances, awaiting, event, out)
        if out:
            if suppress:
                delivery, out = self._decide(delivery, out, ts, retention)
            outputs.extend(out)
        if observed is None:
            outputs.append(event)
        elif observed.flagged:
            if observed.flag is not None:
                outputs.append(observed.flag)
            outputs.append(FlaggedEvent(event))
        else:
            outputs.append(event)
            if observed.signals:
                outputs.extend(observed.signals)
        return UserState(
            instances, state.pending, state.recent, state.last_seen, awaiting, delivery, profile
        )

    def _journeys(
        self,
        journeys: tuple[Journey, ...],
        instances: Mapping[str, Instance],
        awaiting: Mapping[str, Awaiting],
        event: Event,
        outputs: list[Output],
    ) -> tuple[Mapping[str, Instance], Mapping[str, Awaiting]]:
        """The event's effect on the journeys of its kind: resolutions, steps, exits."""
        copied: dict[str, Instance] | None = None  # copy-on-write: the input is never mutated
        for journey in journeys:
            name = journey.name
            inst = instances.get(name) if instances else None
            waiting = awaiting.get(name) if awaiting else None
            if waiting is not None and event.ts <= waiting.expires:
                reached = _furthest_match(journey, waiting.missed, event)
                if reached is not None:
                    outputs.append(self._resolution(journey, waiting, reached, event))
                    awaiting = {n: a for n, a in awaiting.items() if n != name}
            replacement = self._step(journey, inst, event, outputs)
            if replacement is not inst:
                if copied is None:
                    instances = copied = dict(instances)
                if replacement is None:
                    del copied[name]
                else:
                    copied[name] = replacement
        return instances, awaiting

    def _fire_due(
        self,
        user_id: str,
        instances: Mapping[str, Instance],
        awaiting: Mapping[str, Awaiting],
        profile: Profile | None,
        due: int | None,
        before: int,
        outputs: list[Output],
    ) -> tuple[Mapping[str, Instance], Mapping[str, Awaiting], Profile | None, bool]:
        """Fire every deadline earlier than `before`: drop-offs and the profile's retention
        deadline `due` (`Profiles.due`), in event-time order (a drop-off first on a tie),
        however far time jumped: suppression decides in this order. The last value: a
        retention deadline fired."""
        expired = [name for name, inst in instances.items() if inst.deadline < before]
        if due is not None and due >= before:
            due = None
        if not expired and due is None:
            return instances, awaiting, profile, False
        retention = due is not None
        if expired:
            expired.sort(key=lambda name: (instances[name].deadline, name))
            instances = dict(instances)
            awaiting = dict(awaiting)
            for name in expired:
                inst = instances.pop(name)
                if due is not None and due < inst.deadline:
                    profile = self._fire_retention(user_id, profile, due, outputs)
                    due = None
                outputs.extend(self._drop_off(name, inst, user_id, awaiting))
        if due is not None:
            profile = self._fire_retention(user_id, profile, due, outputs)
        return instances, awaiting, profile, retention

    def _fire_retention(
        self, user_id: str, profile: Profile | None, deadline: int, outputs: list[Output]
    ) -> Profile:
        assert profile is not None  # a deadline comes from a profile
        profile, trigger = self.profiles.fire(user_id, profile, deadline)
        if trigger is not None:
            outputs.append(trigger)
        return profile

    def _decide(
        self, delivery: Delivery, outputs: list[Output], at: int, retention: bool
    ) -> tuple[Delivery, list[Output]]:
        """Suppression decides the drop-offs and resolutions among `outputs` (in order) and,
        like drop-offs, the retention triggers."""
        if not retention:
            return self.suppression.apply(delivery, outputs, at)
        decided: list[Any] = []
        for out in outputs:
            if isinstance(out, Trigger) and out.type in PROFILE_TRIGGERS:
                # `Suppression.apply` decides drop-offs only; the same rules, called directly.
                delivery, verdict = self.suppression._decide(
                    delivery, out, parse_ts(out.event_time), at
                )
                if verdict is not None:
                    decided.append(verdict)
            else:
                delivery, kept = self.suppression.apply(delivery, [out], at)
                decided.extend(kept)
        return delivery, decided

    @staticmethod
    def _resolution(journey: Journey, waiting: Awaiting, reached: int, event: Event) -> Resolution:
        missed = journey.steps[waiting.missed]
        return Resolution(
            resolution_id=derive_id("resolution", waiting.trigger_id),
            trigger_id=waiting.trigger_id,
            journey=journey.name,
            user_id=event.user_id,
            missed_step=missed.name,
            reached_step=journey.steps[reached].name,
            cause=missed.cause or Cause.DISTRACTED,
            event_time=format_ts(event.ts),
            resolved_by=event.event_id,
            recovered_after_s=(event.ts - waiting.deadline) / 1000,
        )

    def _step(
        self, journey: Journey, inst: Instance | None, event: Event, outputs: list[Output]
    ) -> Instance | None:
        steps = journey.steps
        if inst is None:
            if not steps[0].matcher.matches(event):
                return None
            outputs.append(Transition(journey.name, "started", steps[0].name))
            started = Instance(
                0, event.event_id, event.ts, event.ts + steps[1].within_ms, Context.of(event)
            )
            # The starting event may already be a later step too (a share click that lands
            # on a product page has reached the product): rule 2 applies to it as well.
            advanced = self._advance(journey, started, event, outputs)
            if advanced is None:
                return started
        else:
            advanced = self._advance(journey, inst, event, outputs)
            if advanced is None:
                for exit_matcher in journey.exits:
                    if exit_matcher.matches(event):
                        outputs.append(Transition(journey.name, "exited", steps[inst.step].name))
                        return None
                return inst
        return None if advanced is _CONVERTED else advanced

    @staticmethod
    def _advance(
        journey: Journey, inst: Instance, event: Event, outputs: list[Output]
    ) -> Instance | None:
        """Move to the furthest later step the event matches: the new instance, `_CONVERTED`
        when that is the last step, or None when the event matches no later step."""
        steps = journey.steps
        last = len(steps) - 1
        for index in range(last, inst.step, -1):
            if steps[index].matcher.matches(event):
                outputs.append(Transition(journey.name, "reached", steps[index].name))
                if index == last:
                    outputs.append(Transition(journey.name, "converted", steps[index].name))
                    return _CONVERTED
                return Instance(
                    index,
                    inst.started_by,
                    event.ts,
                    event.ts + steps[index + 1].within_ms,
                    Context.of(event),
                )
        return None

    def _drop_off(
        self, journey_name: str, inst: Instance, user_id: str, awaiting: dict[str, Awaiting]
    ) -> list[Output]:
        """The drop-off trigger; `awaiting` (the caller's copy) learns to watch for a return."""
        journey = self._journey_by_name[journey_name]
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
            # A dict: validated into TriggerContext inside Trigger's own validation (one
            # validator call per trigger instead of two).
            context=inst.context._asdict(),
        )
        awaiting[journey.name] = Awaiting(
            trigger.trigger_id,
            inst.step + 1,
            inst.deadline,
            inst.deadline + self.journeys.recovery_window_ms,
        )
        return [Transition(journey.name, "dropped_off", missed.name, cause, trigger), trigger]


def _remembers(recent: tuple[int, ...], delivery: Delivery) -> bool:
    """De-dup or suppression memory is left to forget (see `forget_at`)."""
    return bool(recent or delivery.sent or delivery.cooldowns or delivery.withheld)


def _trimmed(delivery: Delivery) -> Delivery:
    """What an idle user with a profile keeps of their delivery: the timezone."""
    if not (delivery.sent or delivery.cooldowns or delivery.withheld or delivery.held):
        return delivery
    return EMPTY_DELIVERY if delivery.tz is None else Delivery(tz=delivery.tz)


def _furthest_match(journey: Journey, first: int, event: Event) -> int | None:
    """Index of the furthest step at or after `first` that the event matches."""
    for index in range(len(journey.steps) - 1, first - 1, -1):
        if journey.steps[index].matcher.matches(event):
            return index
    return None


def _insert(pending: tuple[Event, ...], event: Event) -> tuple[Event, ...]:
    """Insert into the (ts, event_id)-sorted buffer. Usually an append: input is mostly ordered."""
    if not pending:
        return (event,)
    last = pending[-1]
    if last.ts < event.ts or (last.ts == event.ts and last.event_id <= event.event_id):
        return (*pending, event)
    items = list(pending)
    bisect.insort(items, event, key=event_order)
    return tuple(items)


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
        context=context._asdict(),  # validated into TriggerContext (see _drop_off)
    )
