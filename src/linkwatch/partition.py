"""One partition's worth of journeys: the watermark, the wake-up index and per-user states.

Still pure: no clock and no I/O. The store is any mutable mapping (a dict in `replay`, a Faust
table live); the caller decides when time moves by feeding events or calling `advance_to`.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator, MutableMapping
from typing import Final, NamedTuple

from linkwatch.engine import JourneyEngine, Output, Verdict
from linkwatch.errors import RecordRejected, RejectReason
from linkwatch.events import Event, format_ts
from linkwatch.state import UserState

# An event this far ahead of the watermark is a broken clock, not the future.
MAX_FUTURE_MS: Final = 86_400_000
# Beyond any real event time: advancing here closes every open instance.
END_OF_TIME: Final = 1 << 62


class Processed(NamedTuple):
    verdict: Verdict
    outputs: list[Output]


class PartitionProcessor:
    def __init__(
        self, engine: JourneyEngine, store: MutableMapping[str, UserState] | None = None
    ) -> None:
        self.engine = engine
        self.store: MutableMapping[str, UserState] = {} if store is None else store
        self.lateness_ms = engine.journeys.allowed_lateness_ms
        self.max_ts: int | None = None  # newest event time seen
        self.watermark: int | None = None
        # (wake-up time, user_id). Entries may be stale: popping one just re-checks the user.
        self._wakeups: list[tuple[int, str]] = []
        # Idle users to forget once their state TTL has passed: (expiry, user_id) in roughly
        # increasing order. A FIFO, not the heap: one entry per idle spell, and cheap.
        self._expiries: deque[tuple[int, str]] = deque()

    def process(self, event: Event) -> Processed:
        """Feed one decoded event. Raises `RecordRejected` for a far-future timestamp."""
        watermark = self.watermark
        if watermark is not None and event.ts > watermark + MAX_FUTURE_MS:
            raise RecordRejected(
                RejectReason.FUTURE_TIMESTAMP,
                f"field 'ts': {format_ts(event.ts)} is more than 1 day after the "
                f"watermark {format_ts(watermark)}",
                "ts",
            )
        user_id = event.user_id
        accepted = self.engine.accept(self.store.get(user_id), event, watermark)
        if accepted.verdict is not Verdict.DUPLICATE:
            self.store[user_id] = accepted.state
        if accepted.wake is not None:
            self._schedule(accepted.state, accepted.wake, user_id)
        outputs = accepted.outputs
        if self.max_ts is None or event.ts > self.max_ts:
            self.max_ts = event.ts
            target = event.ts - self.lateness_ms
            if watermark is None or target > watermark:
                outputs = outputs + self.advance_to(target) if outputs else self.advance_to(target)
        return Processed(accepted.verdict, outputs)

    def advance_to(self, watermark: int) -> list[Output]:
        """Move the watermark forward (never back) and fire everything due up to it."""
        if self.watermark is not None and watermark <= self.watermark:
            return []
        self.watermark = watermark
        outputs: list[Output] = []
        wakeups = self._wakeups
        store = self.store
        engine = self.engine
        while wakeups and wakeups[0][0] <= watermark:
            _, user_id = heapq.heappop(wakeups)
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
                self._schedule(advanced.state, advanced.wake, user_id)
        self._expire_idle(watermark)
        return outputs

    def _schedule(self, state: UserState, wake: int, user_id: str) -> None:
        if state.instances or state.pending:
            heapq.heappush(self._wakeups, (wake, user_id))
        else:
            self._expiries.append((wake, user_id))

    def _expire_idle(self, watermark: int) -> None:
        expiries = self._expiries
        store = self.store
        ttl = self.engine.state_ttl_ms
        while expiries and expiries[0][0] <= watermark:
            _, user_id = expiries.popleft()
            state = store.get(user_id)
            if state is None or state.instances or state.pending:
                continue  # gone already, or busy again (then the heap tracks it)
            expiry = state.last_seen + ttl
            if expiry <= watermark:
                del store[user_id]
            else:
                expiries.append((expiry, user_id))  # seen again since: check again later

    def flush(self, close_open: bool = False) -> list[Output]:
        """End of input: nothing more can arrive, so apply every buffered event and fire the
        deadlines the input proves have passed. With `close_open`, also close every open
        instance at its deadline, as if time ran on until all of them had expired."""
        outputs: list[Output] = []
        if self.max_ts is not None:
            outputs.extend(self.advance_to(self.max_ts))
        if close_open:
            outputs.extend(self.advance_to(END_OF_TIME))
        return outputs

    def rebuild_index(self) -> None:
        """Recompute the wake-up index from the store (after a restart or rebalance)."""
        self._wakeups = []
        self._expiries = deque()
        for user_id, state in self.store.items():
            self._schedule(state, self.engine.next_wakeup(state), user_id)
        heapq.heapify(self._wakeups)
        self._expiries = deque(sorted(self._expiries))

    def open_instances(self) -> Iterator[tuple[str, str]]:
        """(journey, last step reached) for every instance still open."""
        steps = {j.name: j.steps for j in self.engine.journeys.journeys}
        for state in self.store.values():
            for name, inst in state.instances.items():
                yield name, steps[name][inst.step].name
