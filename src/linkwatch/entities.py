"""The entity stage: signals about links, campaigns, groups, shares and sharers, aggregated per
entity in event-time order (see `signals` for the contract and why).

Pure like the journey engine: the store is any mutable mapping (a dict offline, a Faust table
live) and time moves only when the caller says so. Offline one `EntityStage` holds every
entity and every level follows the journey engine's watermark. Live, entities are spread over
the partitions of the signals topic, and each level's watermark is the minimum of the marks
the partitions feeding it have sent (`service`).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from enum import StrEnum
from typing import Any, Final, NamedTuple

from linkwatch.engine import Transition
from linkwatch.events import (
    ClickEvent,
    EventBase,
    GroupChatEvent,
    PurchaseEvent,
    ShareEvent,
    parse_ts,
)
from linkwatch.journeys import JourneySet
from linkwatch.signals import (
    ENTITY_LEVEL,
    EntityLogic,
    EntityOutput,
    MetricSpec,
    Signal,
    member_hash,
    signal,
)
from linkwatch.triggers import Trigger
from linkwatch.wakeups import CHUNK, Wakeups

# The landing of a click failed (a dead end) from this HTTP-like status on.
FAILED_LANDING: Final = 400


class Offered(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # already buffered: a redelivery
    LATE = "late"  # its level's watermark has passed it: already decided without it


class EntityRecord(NamedTuple):
    """What the stage keeps per (level, entity): the logic's state and the signals waiting for
    the watermark, sorted by (ts, signal_id)."""

    state: Any | None
    pending: tuple[Signal, ...]


def record_key(level: int, entity: str) -> str:
    return f"{level}|{entity}"


class Features(NamedTuple):
    """Which signal families stage 1 derives (each needs its logic enabled)."""

    links: bool
    communities: bool
    fission: bool
    tiers: bool
    final_level: int


def features_of(journeys: JourneySet) -> Features:
    from linkwatch.fission import final_level

    return Features(
        links=journeys.links.enabled,
        communities=journeys.communities.enabled,
        fission=journeys.fission.enabled,
        tiers=journeys.tiers.enabled,
        final_level=final_level(journeys.fission),
    )


def derive_signals(outputs: Iterable[object], features: Features) -> list[Signal]:
    """The signals stage 1's outputs imply: from applied events and drop-off triggers, plus the
    signals the engine emitted itself (those that need the user's profile)."""
    found: list[Signal] = []
    for out in outputs:
        if isinstance(out, EventBase):
            _event_signals(out, features, found)
        elif isinstance(out, Signal):
            found.append(out)
        elif features.links and isinstance(out, Transition) and out.trigger is not None:
            # The drop-off as decided (its trigger may go out later, after quiet hours).
            _dropoff_signals(out.trigger, found)
    return found


def _event_signals(event: EventBase, features: Features, found: list[Signal]) -> None:
    ts = event.ts
    why = event.event_id
    data: dict[str, Any]
    if isinstance(event, ClickEvent):
        if features.links and (event.link_id or event.campaign_id):
            data = {
                "failed": (event.landing_status or 0) >= FAILED_LANDING,
                "via_share": event.ref_share_id is not None,
            }
            if event.link_id:
                found.append(signal(ENTITY_LEVEL, f"link:{event.link_id}", "click", ts, data, why))
            if event.campaign_id:
                entity = f"campaign:{event.campaign_id}"
                found.append(signal(ENTITY_LEVEL, entity, "click", ts, data, why))
        if features.fission and event.ref_share_id:
            found.append(
                signal(
                    ENTITY_LEVEL,
                    f"share:{event.ref_share_id}",
                    "click",
                    ts,
                    {"clicker": event.user_id},
                    why,
                )
            )
    elif isinstance(event, PurchaseEvent):
        amount = str(event.amount)
        if features.fission and event.ref_share_id:
            data = {"buyer": event.user_id, "amount": amount, "currency": event.currency}
            found.append(
                signal(ENTITY_LEVEL, f"share:{event.ref_share_id}", "purchase", ts, data, why)
            )
        if features.tiers:
            data = {"amount": amount, "currency": event.currency, "via_share": event.ref_share_id}
            entity = f"user:{event.user_id}"
            found.append(signal(features.final_level, entity, "purchase", ts, data, why))
    elif isinstance(event, GroupChatEvent):
        if features.communities:
            data = {"action": event.action, "member": member_hash(event.user_id)}
            found.append(signal(ENTITY_LEVEL, f"group:{event.group_id}", "chat", ts, data, why))
    elif isinstance(event, ShareEvent) and features.tiers:
        entity = f"user:{event.user_id}"
        data = {"share_id": event.share_id}
        found.append(signal(features.final_level, entity, "share", ts, data, why))


def _dropoff_signals(trigger: Trigger, found: list[Signal]) -> None:
    """A drop-off right after a click: the event that reached the last step was a click."""
    context = trigger.context
    if context.page is None:  # only clicks carry a page: the last step was not a click
        return
    ts = parse_ts(trigger.deadline or trigger.event_time)
    data = {"journey": trigger.journey, "step": trigger.missed_step}
    for prefix, value in (("link", context.link_id), ("campaign", context.campaign_id)):
        if value:
            found.append(
                signal(ENTITY_LEVEL, f"{prefix}:{value}", "dropoff", ts, data, trigger.trigger_id)
            )


class EntityStage:
    """Every level of the entity stage for the entities one store holds."""

    def __init__(
        self,
        logics: Sequence[EntityLogic],
        store: MutableMapping[str, EntityRecord] | None = None,
        levels: Sequence[int] = (ENTITY_LEVEL,),
        wakeups: Mapping[int, Wakeups] | None = None,
    ) -> None:
        self.logics: dict[str, EntityLogic] = {}
        for logic in logics:
            for prefix in logic.prefixes:
                self.logics[prefix] = logic
        self.store: MutableMapping[str, EntityRecord] = {} if store is None else store
        self.levels = tuple(sorted(levels))
        self.watermarks: dict[int, int | None] = dict.fromkeys(self.levels)
        # Per level: (wake time, record key); `_due` holds each key's one valid entry, so
        # superseded entries are skipped when popped.
        self._wakeups: dict[int, list[tuple[int, str]]] = {level: [] for level in self.levels}
        self._due: dict[str, int] = {}
        # Or, for a store bounded in memory (`live_entities.CachedRecords`), an index per level
        # on disk and no `_due` (it would hold an entry per entity): every record then has an
        # entry at or before its next time, and an entry taken early (stale) only puts the
        # record's true next time back (`_advance_indexed`). Entries of one key and time are
        # held once, so re-pushing them costs no memory.
        self._indexes: dict[int, Wakeups] | None = None
        if wakeups is not None:
            self._indexes = {level: wakeups[level] for level in self.levels}

    def logic_of(self, entity: str) -> EntityLogic | None:
        return self.logics.get(entity.partition(":")[0])

    # -- arrival -------------------------------------------------------------------------------

    def offer(self, sig: Signal) -> Offered:
        """Buffer a signal until its level's watermark passes it."""
        watermark = self.watermarks.get(sig.level)
        if watermark is not None and sig.ts <= watermark:
            return Offered.LATE
        if sig.level not in self._wakeups or self.logic_of(sig.entity) is None:
            raise ValueError(f"no logic at level {sig.level} for entity {sig.entity!r}")
        key = f"{sig.level}|{sig.entity}"  # record_key, inline: once per signal
        record = self.store.get(key)
        if record is None:
            self.store[key] = EntityRecord(None, (sig,))
        else:
            pending = record.pending
            last = pending[-1] if pending else None
            if (
                last is None
                or last.ts < sig.ts
                or (last.ts == sig.ts and last.signal_id < sig.signal_id)
            ):
                # After every signal buffered (the usual case): an append, no search.
                pending = (*pending, sig)
            else:
                # Binary search, not a scan: a busy entity can hold thousands of signals
                # while a lagging partition holds its watermark back. A redelivery is the
                # same signal, so it sorts to the same place.
                at = bisect.bisect_left(pending, signal_order(sig), key=signal_order)
                if at < len(pending) and pending[at].signal_id == sig.signal_id:
                    return Offered.DUPLICATE
                pending = (*pending[:at], sig, *pending[at:])
            self.store[key] = EntityRecord(record.state, pending)
        if self._indexes is not None:
            # The record's next time moved only if this signal is now its first waiting one.
            if record is None or pending[0] is sig:
                self._indexes[sig.level].push(sig.ts, key)
            return Offered.ACCEPTED
        due = self._due.get(key)
        if due is None or sig.ts < due:
            self._schedule(sig.level, key, sig.ts)
        return Offered.ACCEPTED

    def _schedule(self, level: int, key: str, at: int) -> None:
        self._due[key] = at
        heapq.heappush(self._wakeups[level], (at, key))

    # -- time ----------------------------------------------------------------------------------

    def advance(self, level: int, watermark: int) -> list[EntityOutput]:
        """Level `level`'s watermark reached `watermark`: apply its signals and wakes up to it.
        Signals in the outputs are for higher levels: the caller routes them (offline back into
        `offer`, live onto the signals topic)."""
        return [out for chunk in self.advance_chunks(level, watermark) for out in chunk]

    def advance_chunks(
        self, level: int, watermark: int, limit: int = 0
    ) -> Iterator[list[EntityOutput]]:
        """`advance`, with the indexes on disk `limit` (> 0) records at a time: the outputs
        of each chunk, so that a watermark that jumps past millions of wakes (a tier record
        per user) need not hold all their outputs and changed records at once. The watermark
        moves at the start: the caller finishes the chunks before it offers more."""
        current = self.watermarks[level]
        if current is not None and watermark <= current:
            return
        self.watermarks[level] = watermark
        if self._indexes is None:
            yield self._advance_heap(level, watermark)
            return
        while True:
            outputs: list[EntityOutput] = []
            taken = self._advance_indexed(self._indexes[level], watermark, outputs, limit)
            yield outputs
            if not limit or taken < limit:
                return

    def _advance_heap(self, level: int, watermark: int) -> list[EntityOutput]:
        outputs: list[EntityOutput] = []
        wakeups = self._wakeups[level]
        due = self._due
        store = self.store
        heappop, heappush = heapq.heappop, heapq.heappush
        while wakeups and wakeups[0][0] <= watermark:
            at, key = heappop(wakeups)
            if due.get(key) != at:
                continue  # superseded by an earlier entry for the same key
            del due[key]
            record = store.get(key)
            if record is None:
                continue
            wake = self._decide(key, record, watermark, outputs)
            if wake is not None:
                due[key] = wake
                heappush(wakeups, (wake, key))
        return outputs

    def _advance_indexed(
        self, index: Wakeups, watermark: int, outputs: list[EntityOutput], limit: int
    ) -> int:
        """Entries due, at most `limit` of them (0: all): how many were taken. An entry
        taken early (stale) finds nothing due: the record stays as it was, and its true next
        time keeps an entry (maybe the one there already: held once)."""
        store = self.store
        taken = 0
        while due := index.take_due(watermark, limit - taken if limit else CHUNK):
            taken += len(due)
            for _, key in due:
                record = store.get(key)
                if record is None:
                    continue
                wake = self._decide(key, record, watermark, outputs)
                if wake is not None:
                    index.push(wake, key)
            if limit and taken >= limit:
                break
        return taken

    def _decide(
        self, key: str, record: EntityRecord, watermark: int, outputs: list[EntityOutput]
    ) -> int | None:
        """Apply a record's signals and wakes due by `watermark` and store what is left: its
        next time (`_next_time`, from the wake `_run` already asked the logic for), or None
        once it is gone. A record with nothing due is not stored again."""
        entity = key.partition("|")[2]
        logic = self.logics.get(entity.partition(":")[0])
        assert logic is not None  # offer() refused entities without logic
        state, pending, wake = self._run(logic, entity, record, watermark, outputs)
        if state is None and not pending:
            del self.store[key]
            return None
        if state is not record.state or len(pending) != len(record.pending):
            self.store[key] = EntityRecord(state, pending)
        if pending and (wake is None or pending[0].ts < wake):
            wake = pending[0].ts
        assert wake is not None  # a state or a pending signal
        return wake

    @staticmethod
    def _run(
        logic: EntityLogic,
        entity: str,
        record: EntityRecord,
        watermark: int,
        outputs: list[EntityOutput],
    ) -> tuple[Any | None, tuple[Signal, ...], int | None]:
        """Apply the due signals and wakes; the state, the signals left and the state's next
        wake (None without a state), so the caller need not ask the logic again."""
        state, pending = record
        applied = 0
        count = len(pending)
        woken: int | None = None
        next_wake = logic.next_wake
        while True:
            wake = next_wake(state) if state is not None else None
            upcoming = pending[applied] if applied < count else None
            if wake is not None and wake <= watermark and (upcoming is None or wake <= upcoming.ts):
                if woken is not None and wake <= woken:  # a logic bug must not hang the stage
                    raise RuntimeError(f"{entity}: next wake {wake} does not move past {woken}")
                woken = wake
                step = logic.wake(entity, state, wake)
            elif upcoming is not None and upcoming.ts <= watermark:
                step = logic.apply(entity, state, upcoming)
                applied += 1
            else:
                return state, pending[applied:], wake
            state = step.state
            outputs.extend(step.outputs)

    def run(self, watermark: int) -> list[EntityOutput]:
        """Offline: every level follows one watermark; signals for higher levels are fed back
        in. Returns the outputs other than signals, in level order."""
        results: list[EntityOutput] = []
        for level in self.levels:
            for out in self.advance(level, watermark):
                if isinstance(out, Signal):
                    self.offer(out)
                else:
                    results.append(out)
        return results

    def rebuild_index(self) -> None:
        """Recompute the wake-up index from the store (after a restart or rebalance)."""
        self._wakeups = {level: [] for level in self.levels}
        self._due = {}
        for index in (self._indexes or {}).values():
            index.clear()
        for key, record in self.store.items():
            level_text, _, entity = key.partition("|")
            logic = self.logic_of(entity)
            level = int(level_text)
            if logic is None or level not in self._wakeups:
                continue  # a logic since disabled: its entities are left to expire
            at = _next_time(logic, record.state, record.pending)
            if self._indexes is not None:
                self._indexes[level].push(at, key)
                continue
            self._due[key] = at
            self._wakeups[level].append((at, key))
        for heap in self._wakeups.values():
            heapq.heapify(heap)

    def close(self) -> None:
        """Let go of the indexes on disk (a revoked partition)."""
        for index in (self._indexes or {}).values():
            index.close()


def signal_order(sig: Signal) -> tuple[int, str]:
    return (sig.ts, sig.signal_id)


def _next_time(logic: EntityLogic, state: Any | None, pending: tuple[Signal, ...]) -> int:
    times = [pending[0].ts] if pending else []
    if state is not None:
        times.append(logic.next_wake(state))
    return min(times)


# -- wire form (live persistence) ------------------------------------------------------------


def dump_signal(sig: Signal) -> list[Any]:
    return [sig.level, sig.entity, sig.kind, sig.ts, sig.signal_id, dict(sig.data)]


def load_signal(data: Sequence[Any]) -> Signal:
    level, entity, kind, ts, signal_id, payload = data
    return Signal(level, entity, kind, ts, signal_id, payload)


def dump_record(logic: EntityLogic, record: EntityRecord) -> list[Any]:
    state = None if record.state is None else logic.dump(record.state)
    return [state, [dump_signal(s) for s in record.pending]]


def load_record(logic: EntityLogic, data: Sequence[Any]) -> EntityRecord:
    state, pending = data
    return EntityRecord(
        None if state is None else logic.load(state), tuple(load_signal(s) for s in pending)
    )


# -- the logics, from configuration ----------------------------------------------------------


def entity_logics(journeys: JourneySet) -> tuple[list[EntityLogic], list[int]]:
    """The enabled entity logics and the levels they use."""
    from linkwatch.communities import CommunityHealth
    from linkwatch.fission import ShareAttribution, final_level
    from linkwatch.links import LinkHealth
    from linkwatch.tiers import Tiers

    logics: list[EntityLogic] = []
    levels = {ENTITY_LEVEL}
    if journeys.links.enabled:
        logics.append(LinkHealth(journeys.links))
    if journeys.communities.enabled:
        logics.append(CommunityHealth(journeys.communities))
    final = final_level(journeys.fission)
    if journeys.fission.enabled:
        logics.append(ShareAttribution(journeys.fission))
        levels.update(range(ENTITY_LEVEL, final))
    if journeys.tiers.enabled:
        logics.append(Tiers(journeys.tiers, final))
        levels.add(final)
    return logics, sorted(levels)


def build_entity_stage(
    journeys: JourneySet, store: MutableMapping[str, EntityRecord] | None = None
) -> EntityStage | None:
    """The entity stage for a configuration, or None when no entity logic is enabled."""
    logics, levels = entity_logics(journeys)
    if not logics:
        return None
    return EntityStage(logics, store, levels)


def entity_metric_specs() -> list[MetricSpec]:
    """Every metric any entity logic may measure (registered whether enabled or not, so
    dashboards always find them)."""
    from linkwatch import communities, fission, links, tiers

    return [*links.METRICS, *communities.METRICS, *fission.METRICS, *tiers.METRICS]
