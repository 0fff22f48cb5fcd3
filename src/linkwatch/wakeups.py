"""When to look at a user again: (time, user_id) entries, taken in time order once the
watermark passes them.

`HeapWakeups` keeps them in memory (a heap). `disk_wakeups.DiskWakeups` keeps the far ones in
a RocksDB database of the worker's own, so that a partition holding millions of active users
with states on RocksDB (`store.CachedStore`) does not hold an entry per user in memory.

Entries may be stale or repeated: taking one only makes the processor look at the user again.
"""

from __future__ import annotations

import heapq
from typing import Final, Protocol

# Entries taken at once: a watermark that jumps far ahead (after a quiet spell) is worked
# through in chunks, so memory does not hold every entry it passes.
CHUNK: Final = 10_000


class Wakeups(Protocol):
    def push(self, at: int, user_id: str) -> None: ...

    def take_due(self, watermark: int, limit: int = CHUNK) -> list[tuple[int, str]]:
        """Remove and return the earliest entries at or before `watermark` (at most
        `limit`), in time order."""
        ...

    def entries(self) -> list[tuple[int, str]]:
        """Every entry, in time order, without taking any (tests, diagnostics)."""
        ...

    def clear(self) -> None: ...

    def close(self) -> None: ...


class HeapWakeups:
    """In memory."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []

    def push(self, at: int, user_id: str) -> None:
        heapq.heappush(self._heap, (at, user_id))

    def take_due(self, watermark: int, limit: int = CHUNK) -> list[tuple[int, str]]:
        heap = self._heap
        taken: list[tuple[int, str]] = []
        while heap and heap[0][0] <= watermark and len(taken) < limit:
            taken.append(heapq.heappop(heap))
        return taken

    def entries(self) -> list[tuple[int, str]]:
        return sorted(self._heap)

    def clear(self) -> None:
        self._heap = []

    def close(self) -> None:
        self._heap = []
