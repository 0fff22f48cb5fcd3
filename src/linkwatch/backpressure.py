"""Stage 1's inputs paused while the entity stage holds too many records in memory.

Under a backlog the journeys agent (stage 1) runs ahead of the entity stage's highest level,
and every entity record with a signal waiting between them stays decoded in memory
(`LiveEntities.room_needed`): on rocksdb:// a tier record per user, hundreds of thousands of
them while a million users drain. The gate stops fetching the input topics' partitions this
worker holds until the marks on their way have let records go, and starts it again then.

It pauses with Faust's own flow control, not by making the agent wait: a stream whose buffer
fills has its partitions taken out of the consumer's fetches (`Consumer.on_buffer_full`) and
put back once it drains (`on_buffer_drop`), and records already fetched are still delivered.
An agent made to wait stopped everything: Faust's conductor waits for room in a full stream
buffer before it delivers the next record of any topic, the signals and marks the entity
stage needs to catch up included. The ticks topic is never paused: stage 1's marks go out on
ticks.

A pause in which no record is let go for `STALL_S` ends, and the inputs then flow for as long
before they may pause again: a mark that never comes (a bug, a failed send) costs the bound,
not the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

log = logging.getLogger("linkwatch.backpressure")

STALL_S: Final = 30.0


class FlowControlled(Protocol):
    """The part of Faust's consumer the gate uses."""

    def assignment(self) -> Iterable[Any]: ...
    def on_buffer_full(self, tp: Any) -> None: ...
    def on_buffer_drop(self, tp: Any) -> None: ...


class Backpressure(Protocol):
    """The part of `LiveEntities` the gate asks."""

    @property
    def held(self) -> int: ...
    def room_needed(self) -> bool: ...
    async def send_marks(self) -> None: ...


@dataclass
class InputGate:
    consumer: FlowControlled
    topics: frozenset[str]  # the input topics (not the ticks topic)
    entities: Backpressure
    in_recovery: Callable[[], bool]  # Faust resumes every partition itself after recovery
    on_paused: Callable[[float], None] = lambda seconds: None  # seconds paused, as they pass
    clock: Callable[[], float] = time.monotonic
    stall_s: float = STALL_S
    paused: set[Any] = field(default_factory=set)
    paused_at: float | None = None  # when the pause was last counted
    fewest: int = 0  # records held, the fewest this pause
    fell_at: float = 0.0  # when that fell last (or the pause began)
    stalled_at: float | None = None  # when a stalled pause ended

    async def check(self) -> None:
        """Pause or resume the inputs, as the entity stage needs. Called after each batch of
        either agent: while paused, ticks keep the journeys agent's batches coming. Decided
        without letting the event loop run (the two agents' checks must not interleave), the
        marks sent after."""
        if self._decide(self.clock()):
            await self.entities.send_marks()

    def _decide(self, now: float) -> bool:
        """Pause or resume; whether paused."""
        if self.stalled_at is not None and now - self.stalled_at < self.stall_s:
            return False  # the inputs flow a while after a stall
        if self.entities.room_needed() and not self._stalled(now):
            # Every time, not once: a rebalance, or Faust's own buffer draining, puts
            # partitions back into the fetches.
            tps = [tp for tp in self.consumer.assignment() if tp.topic in self.topics]
            for tp in tps:
                self.consumer.on_buffer_full(tp)
            self.paused.update(tps)
            self._count(now)
            return True
        if self.paused_at is not None:
            if not self.in_recovery():  # (in recovery Faust resumes them when done)
                assigned = set(self.consumer.assignment())
                for tp in self.paused & assigned:  # a revoked one must not be fetched
                    self.consumer.on_buffer_drop(tp)
            self._count(now)
            self.paused.clear()
            self.paused_at = None
        return False

    def _stalled(self, now: float) -> bool:
        held = self.entities.held
        if self.paused_at is None or held < self.fewest:
            self.fewest, self.fell_at = held, now
            return False
        if now - self.fell_at < self.stall_s:
            return False
        stalled = now - self.fell_at
        log.warning("inputs paused %.0f s, no entity record let go: they flow as long", stalled)
        self.stalled_at = now
        return True

    def _count(self, now: float) -> None:
        if self.paused_at is not None:
            self.on_paused(max(0.0, now - self.paused_at))
        self.paused_at = now
