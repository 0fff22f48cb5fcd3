"""One partition's worth of journeys: the watermark, the wake-up index and per-user states.

Still pure: no clock and no I/O. The store is any mutable mapping (a dict in `replay`, a Faust
table live); the caller decides when time moves by feeding events, ticks or `advance_to`.

Live, one partition number is fed by several topics (one per event kind), consumed in uneven
batches. Each topic ("source") keeps its own newest event time and the watermark follows the
slowest active one, so a lagging topic's events are not mistaken for late ones. A source
silent for `idle_timeout` of wall-clock time stops holding the watermark back; when every
source is silent, the watermark follows the wall clock (minus `idle_timeout`), so deadlines
fire even if no further event ever arrives. "Silent" means nothing left to read: the caller
says which sources still have records waiting (consumer lag), and those never count as idle,
however long the worker is busy elsewhere. Offline (`replay`) there is one source and no
clock, and the watermark is simply the newest event time minus the allowed lateness.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Final, NamedTuple

from linkwatch.engine import OPEN_CHANGE, JourneyEngine, Output, Transition, Verdict
from linkwatch.errors import RecordRejected, RejectReason
from linkwatch.events import Event, format_ts
from linkwatch.reload import Shapes, retire, shapes_of
from linkwatch.state import UserState, has_work
from linkwatch.wakeups import CHUNK, HeapWakeups, Wakeups

# An event this far ahead of the watermark is a broken clock, not the future.
MAX_FUTURE_MS: Final = 86_400_000
# Beyond any real event time: advancing here closes every open instance.
END_OF_TIME: Final = 1 << 62


# Does this source (topic) still have records waiting to be read?
Backlog = Callable[[str], bool]


class Processed(NamedTuple):
    verdict: Verdict
    outputs: list[Output]


class SourceClock:
    """Progress of one input (topic) of the partition."""

    __slots__ = ("max_ts", "seen_at")

    def __init__(self, max_ts: int | None, seen_at: int | None) -> None:
        self.max_ts = max_ts  # newest event time from this source (None: none yet)
        self.seen_at = seen_at  # wall-clock ms of its latest event (None offline)


class PartitionProcessor:
    def __init__(
        self,
        engine: JourneyEngine,
        store: MutableMapping[str, UserState] | None = None,
        *,
        idle_timeout_ms: int | None = None,
        started_at: int | None = None,
        sources: Iterable[str] = (),
        stall_ms: int | None = None,
        wakeups: Wakeups | None = None,
        expiries: Wakeups | None = None,
        fire_limit: int | None = None,
    ) -> None:
        self.engine = engine
        self.store: MutableMapping[str, UserState] = {} if store is None else store
        self.lateness_ms = engine.journeys.allowed_lateness_ms
        self.idle_timeout_ms = idle_timeout_ms
        self.started_at = started_at  # wall-clock ms this processor began (live only)
        self.max_ts: int | None = None  # newest event time seen
        self.watermark: int | None = None
        # Declared sources hold the watermark back from the start, until they report or fall
        # silent: otherwise a topic whose first record is read after others' would be late.
        self.sources: dict[str, SourceClock] = {
            name: SourceClock(None, started_at) for name in sources
        }
        # Wall-clock ms of the latest record or tick read (live only): each proves the worker
        # could read then. The part of a gap between reads beyond `stall_ms` it could not.
        self.last_read_at: int | None = None
        self.stall_ms = stall_ms
        # (wake-up time, user_id) of users with work. Entries may be stale: taking one just
        # re-checks the user. In memory by default; on disk beside a store on disk.
        self._wakeups: Wakeups = HeapWakeups() if wakeups is None else wakeups
        # Idle users to forget once their state TTL has passed: (expiry, user_id).
        self._expiries: Wakeups = HeapWakeups() if expiries is None else expiries
        # Live: at most this many wake-ups and expiries taken per call, so that a watermark
        # jumping past a million deadlines does not decide them all (states and triggers
        # held in memory) before any is delivered. The rest wait, `behind`, for `catch_up`.
        # None (offline): everything due at once.
        self.fire_limit = fire_limit
        self.behind = False
        # Open instances by journey: counted from the states at each index rebuild, then kept
        # up to date from the transitions (a rebalance need not read every state to tell).
        self.open_counts: Counter[str] = Counter()

    def process(
        self,
        event: Event,
        source: str = "",
        now_ms: int | None = None,
        backlog: Backlog | None = None,
    ) -> Processed:
        """Feed one decoded event from `source` (live: its topic), at wall-clock `now_ms` (live
        only); `backlog(source)` tells whether a source has records waiting. Raises
        `RecordRejected` for a timestamp far in the future."""
        watermark = self.watermark
        ts = event.ts
        if now_ms is not None:
            # Live, the clock tells a broken clock. The watermark cannot: it follows the
            # slowest topic, which may lag the others by more than a day in a backfill.
            if ts > now_ms + MAX_FUTURE_MS:
                raise _future(ts, now_ms, "the clock")
        elif watermark is not None and ts > watermark + MAX_FUTURE_MS:
            raise _future(ts, watermark, "the watermark")
        if now_ms is not None:
            self._read_at(now_ms)
        user_id = event.user_id
        accepted = self.engine.accept(self.store.get(user_id), event, watermark)
        self._count_open(accepted.outputs)
        if accepted.verdict is not Verdict.DUPLICATE:
            self.store[user_id] = accepted.state
        if accepted.wake is not None:
            self._schedule(accepted.state, accepted.wake, user_id)
        clock = self.sources.get(source)
        if clock is None:
            self.sources[source] = SourceClock(ts, now_ms)
        else:
            clock.seen_at = now_ms
            if clock.max_ts is None or ts > clock.max_ts:
                clock.max_ts = ts
        if self.max_ts is None or ts > self.max_ts:
            self.max_ts = ts
        target = self._event_watermark(now_ms, backlog)
        outputs = accepted.outputs
        if target is not None and (watermark is None or target > watermark):
            outputs = outputs + self.advance_to(target) if outputs else self.advance_to(target)
        return Processed(accepted.verdict, outputs)

    def _read_at(self, now_ms: int) -> None:
        """A record or tick was read at `now_ms`. Ticks come every tick interval while this
        worker can read, so the part of a gap between reads beyond `stall_ms` is time it
        could not (the broker was down, the process stalled), and it counts as no source's
        silence. Otherwise records held back upstream during a broker outage would all be
        late when it ends. Records count as well as ticks: after an outage the first record
        read may come before the first tick, and judged without the discount it found every
        other source silent for the whole outage (the 30 s outage test: purchases late,
        their drop-offs invented)."""
        last, self.last_read_at = self.last_read_at, now_ms
        if last is None or self.stall_ms is None:
            return
        # Only the excess over `stall_ms`: ticks that keep arriving a little late (a slow
        # broker) must not postpone every source's silence for ever.
        blind = now_ms - last - self.stall_ms
        if blind > 0:
            for clock in self.sources.values():
                if clock.seen_at is not None:
                    clock.seen_at = min(now_ms, clock.seen_at + blind)
            if self.started_at is not None:
                self.started_at = min(now_ms, self.started_at + blind)

    def on_tick(self, now_ms: int, backlog: Backlog | None = None) -> list[Output]:
        """Wall-clock time passed (live): idle sources stop holding the watermark back, and
        when all are idle the watermark follows the clock (see `_read_at` for time in which
        the worker could not read)."""
        self._read_at(now_ms)
        if self.max_ts is None and self.watermark is None:
            # Nothing seen yet: nothing can be due, and following the clock now would make
            # every event that does arrive (e.g. a backfill of older data) late.
            return []
        target = self._event_watermark(now_ms, backlog)
        if target is None:  # every source idle, or one has not reported yet
            if backlog is not None and any(backlog(name) for name in self.sources):
                # Records still waiting: the clock must not outrun them, or every one of
                # them would be late (a backlog whose other topic has not been read yet).
                return []
            since = max(
                (c.seen_at or 0 for c in self.sources.values() if c.max_ts is not None),
                default=self.started_at or 0,
            )
            if now_ms - since < (self.idle_timeout_ms or 0):
                return []
            target = now_ms - (self.idle_timeout_ms or 0)
        return self.advance_to(target)

    def restore(self, watermark: int | None, sources: dict[str, int], now_ms: int | None) -> None:
        """Resume after a restart or rebalance: the persisted watermark and source progress."""
        self.watermark = watermark
        for name, ts in sources.items():
            self.sources[name] = SourceClock(ts, now_ms)
        self.max_ts = max(sources.values(), default=None)
        self.rebuild_index()
        # Written while catching up, the states may still hold deadlines up to the watermark.
        self.behind = True

    def reconfigure(self, engine: JourneyEngine, since: Shapes | None = None) -> list[Output]:
        """Run under `engine` from now on (a reloaded configuration). Every stored state gives
        up what the new journeys removed or changed since `since`, the journeys its states
        were written under (default: this processor's engine's): open instances end as
        `retired` transitions (the outputs), pending resolutions are dropped. Buffered events
        and every later event are applied under the new journeys and settings."""
        old = shapes_of(self.engine.journeys) if since is None else since
        new = shapes_of(engine.journeys)
        outputs: list[Output] = []
        changed: list[tuple[str, UserState]] = []
        # The same journeys (every load of a partition, normally) retire nothing: no pass
        # over the states, a million of them on RocksDB.
        for user_id, state in self.store.items() if old != new else ():
            retired, transitions = retire(state, old, new)
            if retired is not state:
                changed.append((user_id, retired))
                outputs.extend(transitions)
        for user_id, retired in changed:
            self.store[user_id] = retired
        if engine is not self.engine or changed:
            self.engine = engine
            self.lateness_ms = engine.journeys.allowed_lateness_ms
            # Deadlines of retired instances are gone, and forgetting idle users follows the
            # new suppression rules.
            self.rebuild_index()
        return outputs

    def _event_watermark(self, now_ms: int | None, backlog: Backlog | None) -> int | None:
        """The slowest active source's newest event time, minus the allowed lateness."""
        sources = self.sources
        if len(sources) == 1 and now_ms is None:
            return self.max_ts - self.lateness_ms if self.max_ts is not None else None
        idle_ms = self.idle_timeout_ms
        lowest: int | None = None
        for name, clock in sources.items():
            if (
                now_ms is not None
                and idle_ms is not None
                and clock.seen_at is not None
                and now_ms - clock.seen_at >= idle_ms
                and not (backlog is not None and backlog(name))
            ):
                continue  # silent: must not hold the others back
            if clock.max_ts is None:
                return None  # an active source has not reported yet: wait for it
            if lowest is None or clock.max_ts < lowest:
                lowest = clock.max_ts
        return None if lowest is None else lowest - self.lateness_ms

    def advance_to(self, watermark: int) -> list[Output]:
        """Move the watermark forward (never back) and fire everything due up to it (with a
        `fire_limit`, the first of it: see `catch_up`)."""
        if self.watermark is not None and watermark <= self.watermark:
            return []
        self.watermark = watermark
        self.behind = True
        return self.catch_up()

    def catch_up(self) -> list[Output]:
        """Fire what is due up to the watermark and not fired yet: at most `fire_limit`
        wake-ups and expiries, in time order; `behind` stays True while some may be left.
        Cut anywhere, the outputs are those of firing everything at once, in the same order.
        A caller with a `fire_limit` calls this until `behind` is False before it gives the
        partition its next event (the event must meet the state the deadlines left)."""
        if not self.behind or self.watermark is None:
            self.behind = False
            return []
        watermark = self.watermark
        budget = self.fire_limit
        outputs: list[Output] = []
        store = self.store
        engine = self.engine
        # Taken in chunks: what a step re-schedules is beyond the watermark, so a chunk
        # never holds an entry the step before it added.
        while True:
            if budget == 0:
                self._count_open(outputs)
                return outputs  # `behind`: there may be more
            due = self._wakeups.take_due(watermark, _chunk(budget))
            if not due:
                break
            if budget is not None:
                budget -= len(due)
            for _, user_id in due:
                state = store.get(user_id)
                if state is None:
                    continue  # stale entry for a user already expired
                advanced = engine.advance(user_id, state, watermark)
                outputs.extend(advanced.outputs)
                if advanced.state is None:
                    del store[user_id]
                    continue
                if advanced.state is not state:
                    store[user_id] = advanced.state
                if advanced.wake is not None:
                    # A wake-up not beyond this watermark would spin this loop forever; it
                    # can only come from a bug, and must cost a delay, not a stalled stream.
                    wake = advanced.wake if advanced.wake > watermark else watermark + 1
                    self._schedule(advanced.state, wake, user_id)
        self.behind = not self._expire_idle(watermark, budget)
        self._count_open(outputs)
        return outputs

    def _count_open(self, outputs: list[Output]) -> None:
        counts = self.open_counts
        for out in outputs:
            if isinstance(out, Transition):
                counts[out.journey] += OPEN_CHANGE[out.outcome]

    def _schedule(self, state: UserState, wake: int, user_id: str) -> None:
        if has_work(state):
            self._wakeups.push(wake, user_id)
        else:
            self._expiries.push(wake, user_id)

    def _expire_idle(self, watermark: int, budget: int | None) -> bool:
        """Forget idle users whose state TTL has passed, at most `budget` of the entries due:
        whether all of them are done."""
        expiries = self._expiries
        store = self.store
        forget_at = self.engine.forget_at
        while True:
            if budget == 0:
                return False
            due = expiries.take_due(watermark, _chunk(budget))
            if not due:
                return True
            if budget is not None:
                budget -= len(due)
            for _, user_id in due:
                state = store.get(user_id)
                if state is None or has_work(state):
                    continue  # gone already, or busy again (then the wake-ups track it)
                expiry = forget_at(state.last_seen, state.delivery)
                if expiry <= watermark:
                    del store[user_id]
                else:
                    expiries.push(expiry, user_id)  # seen again since: check again later

    def flush(self, close_open: bool = False) -> list[Output]:
        """End of input: nothing more can arrive, so apply every buffered event and fire the
        deadlines the input proves have passed. With `close_open`, also close every open
        instance at its deadline, as if time ran on until all of them had expired."""
        outputs: list[Output] = []
        if self.max_ts is not None:
            outputs.extend(self.advance_to(self.max_ts))
        if close_open:
            outputs.extend(self.advance_to(END_OF_TIME))
        while self.behind:
            outputs.extend(self.catch_up())
        return outputs

    def rebuild_index(self) -> None:
        """Recompute the wake-up index from the store (after a restart or rebalance)."""
        self._wakeups.clear()
        self._expiries.clear()
        counts: Counter[str] = Counter()
        for user_id, state in self.store.items():
            self._schedule(state, self.engine.next_wakeup(state), user_id)
            counts.update(state.instances.keys())
        self.open_counts = counts

    def close(self) -> None:
        """The partition is gone from this worker: release its wake-up indexes."""
        self._wakeups.close()
        self._expiries.close()

    def open_instances(self) -> Iterator[tuple[str, str]]:
        """(journey, last step reached) for every instance still open (a pass over every
        state: `open_counts` counts them without one)."""
        steps = {j.name: j.steps for j in self.engine.journeys.journeys}
        for state in self.store.values():
            for name, inst in state.instances.items():
                yield name, steps[name][inst.step].name


def _chunk(budget: int | None) -> int:
    return CHUNK if budget is None else min(CHUNK, budget)


def _future(ts: int, reference: int, what: str) -> RecordRejected:
    return RecordRejected(
        RejectReason.FUTURE_TIMESTAMP,
        f"field 'ts': {format_ts(ts)} is more than 1 day after {what} ({format_ts(reference)})",
        "ts",
    )
