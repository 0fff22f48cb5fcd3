"""Per-key states of one partition (users, or entities), backed by a Faust table
(changelog-replicated).

A write-back cache: the engine reads and writes decoded states in memory; `flush` writes the
keys changed since the last flush to the table. The service flushes only after the outputs
those changes produced have been delivered, so a durable state never implies a lost output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any, Final, Generic, Protocol, TypeVar

from linkwatch.state import UserState, dump_state, load_state


class BytesTable(Protocol):
    """The part of a Faust table we use (keys and values are raw bytes)."""

    def __setitem__(self, key: bytes, value: bytes) -> None: ...
    def __delitem__(self, key: bytes) -> None: ...
    def __contains__(self, key: object) -> bool: ...
    def items(self) -> Iterable[tuple[Any, Any]]: ...
    def get(self, key: bytes) -> Any: ...


log = logging.getLogger(__name__)

# A changelog record must fit the broker's message size (Kafka's default max.message.bytes
# is 1 MB, and aiokafka refuses a bigger record): one that does not would crash the worker's
# producer and stop the stream. Such a value stays in memory only, and is reported.
MAX_VALUE_BYTES: Final = 900_000

V = TypeVar("V")
# (key, value, partition) → the bytes stored; the partition is kept in the value so that
# recovered states can be grouped by partition whatever partitioner the producers used.
Encoder = Callable[[str, V, int], bytes]


class WriteBackStore(MutableMapping[str, V], Generic[V]):
    """All values of one partition, decoded; changes are written to the table on `flush`."""

    def __init__(
        self, table: BytesTable, partition: int, states: dict[str, V], encode: Encoder[V]
    ) -> None:
        self._table = table
        self.partition = partition
        self._states = states
        self._encode = encode
        self._dirty: set[str] = set()
        # Told (key kind, size) of a value too big to write; the service logs and counts it.
        self.on_oversized: Callable[[str, int], None] = log_oversized
        # What a key stands for, without naming it (user ids never go into logs or labels).
        self.kind_of: Callable[[str], str] = lambda key: "user"

    def __getitem__(self, user_id: str) -> V:
        return self._states[user_id]

    def get(self, user_id: str, default: Any = None) -> Any:
        return self._states.get(user_id, default)

    def __setitem__(self, user_id: str, state: V) -> None:
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
        """Write changed keys to the table (must run in the partition's event context)."""
        written = 0
        for user_id in self._dirty:
            key = user_id.encode()
            state = self._states.get(user_id)
            if state is not None:
                value = self._encode(user_id, state, self.partition)
                if len(value) > MAX_VALUE_BYTES:
                    self.on_oversized(self.kind_of(user_id), len(value))
                    continue
                self._table[key] = value
            elif key in self._table:
                del self._table[key]
            written += 1
        self._dirty.clear()
        return written


def log_oversized(kind: str, size: int) -> None:
    log.error(
        "a %s state of %d bytes is too big for the changelog (limit %d): kept in memory only",
        kind,
        size,
        MAX_VALUE_BYTES,
    )


class PartitionStore(WriteBackStore[UserState]):
    """All users of one partition."""

    def __init__(self, table: BytesTable, partition: int, states: dict[str, UserState]) -> None:
        super().__init__(table, partition, states, _encode_user)


def _encode_user(user_id: str, state: UserState, partition: int) -> bytes:
    return dump_state(state, partition)


def end_of_batch_key(partition: int) -> bytes:
    """The key of the marker that ends a batch's writes to a changelog partition. Tansu
    reports a partition's end as the first offset of its last record batch, and Faust's table
    recovery stops there: the rest of that batch would be missing after a restart. So a
    batch's writes are flushed first, and then this one-record write ends the partition (its
    value is empty; loaders skip it)."""
    return b"\x00end-of-batch:" + str(partition).encode()


# Keys of progress records start with this (see `progress_key`).
PROGRESS_PREFIX: Final = b"\x00progress:"
# In a progress record: its writer ends every commit's writes to a partition with one.
CLOSES_COMMIT: Final = "closes_commit"


def progress_key(partition: int) -> bytes:
    """The key of a partition's progress (watermark, sources, marks) in the table that holds
    its states. Same table, so same changelog partition, and written after the states it was
    decided with, at every write of them: it closes them (`commit_table`), so a recovery
    restores states and progress of the same commit. (In a table of its own it could not: the
    kill -9 test restored a watermark that had passed events whose states were cut off, and
    replayed them as late.)"""
    return PROGRESS_PREFIX + str(partition).encode()


def load_partitions(
    table: BytesTable,
    partitions: Iterable[int],
    decode: Callable[[str, bytes], tuple[int, V]] | None = None,
) -> dict[int, dict[str, Any]]:
    """Decode every recovered value of the given partitions, in one pass over the table
    (by default user states)."""
    wanted = set(partitions)
    loaded: dict[int, dict[str, Any]] = {p: {} for p in wanted}
    for key, raw in table.items():
        if not raw:  # deleted, or an end-of-batch marker
            continue
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name.startswith("\x00"):  # a partition's progress (see `progress_key`)
            continue
        partition, state = decode(name, raw) if decode is not None else load_state(raw)
        if partition in wanted:
            loaded[partition][name] = state
    return loaded
