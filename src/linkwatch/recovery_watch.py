"""Unstick Faust table recovery that waits for records it will never be handed.

Faust restores a table by seeking each changelog partition and waiting until it has read up to
the partition's end. If no record of a partition ever reaches it, it waits for ever and only
logs "No event received for active tp ... since recovery start" (seen once on CI: a worker that
kept its partitions through a rebalance never finished recovering them). One known cause is in
Faust itself: a seek to offset 0 keeps the consumer's stale read offset, so it drops the
re-read records. The watchdog seeks such a partition again the way that also resets the read
offset. A seek to where recovery already is loses nothing and applies nothing twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

log = logging.getLogger(__name__)

TP = TypeVar("TP")


def stalled_partitions(
    offsets: Mapping[TP, int],
    highwaters: Mapping[TP, int],
    received_at: Mapping[TP, float],
    started_at: float,
    now: float,
    timeout: float,
) -> list[TP]:
    """The changelog partitions still behind their end that have had no record for `timeout`
    seconds (counting from the start of recovery for one that had none)."""
    stalled = []
    for tp, highwater in highwaters.items():
        offset = offsets.get(tp)
        if offset is None or highwater is None or offset >= highwater:
            continue  # done (or nothing to read)
        if now - max(received_at.get(tp, started_at), started_at) >= timeout:
            stalled.append(tp)
    return stalled


class RecoveryWatchdog:
    """Call `check()` periodically; it re-seeks the stalled partitions of a running recovery."""

    def __init__(
        self,
        app: Any,
        timeout: float,
        on_reseek: Callable[[int], None] = lambda n: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.timeout = timeout
        self.on_reseek = on_reseek
        self.clock = clock
        self._last_seek: dict[Any, float] = {}

    async def check(self) -> None:
        recovery = self.app.tables.recovery
        started = getattr(recovery, "_recovery_started_at", None)
        if not recovery.in_recovery or started is None:
            self._last_seek.clear()
            return
        now = self.clock()
        received = dict(getattr(recovery, "_active_events_received_at", {}))
        for tp, at in self._last_seek.items():  # a re-seek restarts the wait
            received[tp] = max(received.get(tp, at), at)
        offsets = recovery.active_offsets
        stalled = stalled_partitions(
            offsets, recovery.active_highwaters, received, started, now, self.timeout
        )
        consumer = self.app.consumer
        for tp in stalled:
            offset = max(offsets[tp] + 1, 0)  # recovery's offsets are the last one read
            log.warning(
                "recovery of %s[%d] has read nothing for %.0f s (at %d of %d, consumer read "
                "offset %s): seeking it to %d again",
                tp.topic,
                tp.partition,
                self.timeout,
                offsets[tp],
                recovery.active_highwaters[tp],
                getattr(consumer, "_read_offset", {}).get(tp),
                offset,
            )
            await consumer.seek(tp, offset)
            consumer._read_offset[tp] = None  # take the first record read again
            self._last_seek[tp] = now
        if stalled:
            self.on_reseek(len(stalled))
