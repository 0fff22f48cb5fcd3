"""Per-user states of one partition, backed by a Faust table (changelog-replicated).

A write-back cache: the engine reads and writes decoded states in memory; `flush` writes the
users changed since the last flush to the table. The service flushes only after the triggers
those changes produced have been delivered, so a durable state never implies a lost trigger.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any, Protocol

from linkwatch.state import UserState, dump_state, load_state


class BytesTable(Protocol):
    """The part of a Faust table we use (keys and values are raw bytes)."""

    def __setitem__(self, key: bytes, value: bytes) -> None: ...
    def __delitem__(self, key: bytes) -> None: ...
    def __contains__(self, key: object) -> bool: ...
    def items(self) -> Iterable[tuple[Any, Any]]: ...


class PartitionStore(MutableMapping[str, UserState]):
    """All users of one partition, decoded; changes are written to the table on `flush`."""

    def __init__(self, table: BytesTable, partition: int, states: dict[str, UserState]) -> None:
        self._table = table
        self.partition = partition
        self._states = states
        self._dirty: set[str] = set()

    def __getitem__(self, user_id: str) -> UserState:
        return self._states[user_id]

    def get(self, user_id: str, default: Any = None) -> Any:
        return self._states.get(user_id, default)

    def __setitem__(self, user_id: str, state: UserState) -> None:
        self._states[user_id] = state
        self._dirty.add(user_id)

    def __delitem__(self, user_id: str) -> None:
        del self._states[user_id]
        self._dirty.add(user_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    @property
    def dirty(self) -> int:
        return len(self._dirty)

    def flush(self) -> int:
        """Write changed users to the table (must run in the partition's event context)."""
        written = 0
        for user_id in self._dirty:
            key = user_id.encode()
            state = self._states.get(user_id)
            if state is not None:
                self._table[key] = dump_state(state, self.partition)
            elif key in self._table:
                del self._table[key]
            written += 1
        self._dirty.clear()
        return written


def load_partitions(
    table: BytesTable, partitions: Iterable[int]
) -> dict[int, dict[str, UserState]]:
    """Decode every recovered state of the given partitions, in one pass over the table."""
    wanted = set(partitions)
    loaded: dict[int, dict[str, UserState]] = {p: {} for p in wanted}
    for key, raw in table.items():
        if raw is None:
            continue
        partition, state = load_state(raw)
        if partition in wanted:
            loaded[partition][key.decode() if isinstance(key, bytes) else str(key)] = state
    return loaded
