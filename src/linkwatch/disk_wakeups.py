"""The wake-up index on disk (see `wakeups`): a partition's far entries in a RocksDB database
of the worker's own. The index is derived from the states: nothing replicates it, and it is
rebuilt from them whenever a partition is loaded."""

from __future__ import annotations

import heapq
import shutil
from pathlib import Path
from typing import Any, Final

from rocksdict import Options, Rdict, WriteBatch

from linkwatch.wakeups import CHUNK

_OFFSET: Final = 1 << 63  # keys sort as unsigned bytes; times may be negative in theory
_NEVER: Final = 1 << 64
# Entries due within this much event time after the watermark are held in memory.
HORIZON_MS: Final = 60_000


def _key(at: int, user_id: str) -> bytes:
    return (at + _OFFSET).to_bytes(8, "big") + user_id.encode()


def _options() -> Options:
    """Small buffers: an entry is a few dozen bytes, and most are taken soon after."""
    options = Options(raw_mode=True)
    options.set_write_buffer_size(4 << 20)
    options.set_max_write_buffer_number(2)
    return options


def _entry(key: Any) -> tuple[int, str]:
    return int.from_bytes(key[:8], "big") - _OFFSET, key[8:].decode()


class DiskWakeups:
    """In a RocksDB database at `path`, created empty (whatever was there is a previous run's
    index: stale), but for the entries due within `horizon` after the watermark, which a heap
    holds: most entries are near (an event buffered for the allowed lateness, a tick's
    re-check), and the database is read once per `horizon` of event time, not per entry.
    Memory holds the near entries only: at most what is scheduled within `horizon`, or
    `limit` at once after a jump of the watermark.

    Keys are the time (8 bytes, big-endian) then the user id, so the database keeps them in
    time order. Invariant: every entry before `_edge` is in the heap, every later one in the
    database."""

    def __init__(self, path: Path, horizon: int = HORIZON_MS) -> None:
        self.path = path
        self.horizon = horizon
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), options=_options())
        # The near entries: a heap, and a set so that each is held once (as in the database).
        self._near: list[tuple[int, str]] = []
        self._near_set: set[tuple[int, str]] = set()
        self._edge = -_OFFSET  # nothing is near yet
        # Everything in the database before this key has been moved to the heap: reading
        # starts here, not at the tombstones of what was moved before.
        self._floor = b""
        self._next_at = _NEVER  # no entry in the database is due before this time

    def push(self, at: int, user_id: str) -> None:
        if at < self._edge:
            self._push_near((at, user_id))
            return
        key = _key(at, user_id)
        self._db.put(key, b"")
        if at < self._next_at:
            self._next_at = at

    def take_due(self, watermark: int, limit: int = CHUNK) -> list[tuple[int, str]]:
        if watermark >= self._edge:
            self._move_near(watermark + 1 + self.horizon, limit)
        near, near_set = self._near, self._near_set
        taken: list[tuple[int, str]] = []
        while near and near[0][0] <= watermark and len(taken) < limit:
            entry = heapq.heappop(near)
            near_set.discard(entry)
            taken.append(entry)
        return taken

    def _push_near(self, entry: tuple[int, str]) -> None:
        if entry not in self._near_set:
            self._near_set.add(entry)
            heapq.heappush(self._near, entry)

    def _move_near(self, edge: int, limit: int) -> None:
        """Move the database's entries before `edge` to the heap, at most `limit` of them
        (then the edge stops at the first entry left)."""
        if self._next_at >= edge:
            self._edge = edge  # nothing there to move
            return
        end = (edge + _OFFSET).to_bytes(8, "big")
        batch = WriteBatch(raw_mode=True)
        moved = 0
        it = self._db.iter()
        it.seek(self._floor)
        self._next_at = _NEVER
        while it.valid():
            key = it.key()
            if key >= end or moved == limit:
                self._next_at = _entry(key)[0]
                edge = min(edge, self._next_at)
                break
            self._push_near(_entry(key))
            batch.delete(key)  # point deletes: a range tombstone slows every later read
            self._floor = key + b"\x00"
            moved += 1
            it.next()
        del it
        if moved:
            self._db.write(batch)
        self._edge = edge

    def entries(self) -> list[tuple[int, str]]:
        on_disk = [_entry(key) for key in self._db.keys(from_key=self._floor)]
        return sorted(self._near + on_disk)

    def clear(self) -> None:
        self._db.close()
        self.__init__(self.path, self.horizon)  # type: ignore[misc]

    def close(self) -> None:
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)
