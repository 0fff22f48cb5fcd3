"""Per-key states of one partition (users, or entities), backed by a Faust table
(changelog-replicated).

A write-back cache: the engine reads and writes decoded states in memory; `flush` writes the
keys changed since the last flush to the table. The service flushes only after the outputs
those changes produced have been delivered, so a durable state never implies a lost output.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any, Final, Generic, Protocol, TypeVar, cast

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
# (key, value) taken to be written, in order; None: the key was deleted.
Changes = list[tuple[str, V | None]]
# (key, value, partition) → the bytes stored; the partition is kept in the value so that
# recovered states can be grouped by partition whatever partitioner the producers used.
Encoder = Callable[[str, V, int], bytes]


class WriteBackStore(MutableMapping[str, V], Generic[V]):
    """All values of one partition, decoded; changes are written to the table on `flush`."""

    def __init__(
        self,
        table: BytesTable,
        partition: int,
        states: MutableMapping[str, V],
        encode: Encoder[V],
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

    @property
    def cached(self) -> int:
        """Values held decoded: all of them."""
        return len(self._states)

    reads = 0  # values read back from the table: none, all are held

    def flush(self) -> int:
        """Write changed keys to the table (must run in the partition's event context)."""
        return self.write(self.take())

    def take(self) -> Changes[V]:
        """The keys changed since the last take, with their values now (None: deleted), for
        `write`: values are immutable, so what is taken stays as it was at the take, however
        the keys change before it is written."""
        states = self._states
        changes = [(key, states.get(key)) for key in self._dirty]
        self._dirty.clear()
        return changes

    def write(self, changes: Changes[V]) -> int:
        """Write taken changes to the table (in the partition's event context), in the order
        taken: how many were written."""
        written = 0
        for key, value in changes:
            raw = None if value is None else self._encode(key, value, self.partition)
            written += write_key(self._table, key, raw, self)
        return written


class Reporter(Protocol):
    on_oversized: Callable[[str, int], None]
    kind_of: Callable[[str], str]


def write_key(table: BytesTable, key: str, raw: bytes | None, reporter: Reporter) -> bool:
    """Write one key's encoded value to the table, or delete the key (`raw` None). A value
    too big for a changelog record is not written but reported: False."""
    encoded = key.encode()
    if raw is None:
        if encoded in table:
            del table[encoded]
        return True
    if len(raw) > MAX_VALUE_BYTES:
        reporter.on_oversized(reporter.kind_of(key), len(raw))
        return False
    table[encoded] = raw
    return True


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


# What the cache remembers of a key the table does not hold, so that a miss costs one read.
ABSENT: Final = object()


class ReadBack:
    """Values of a partition's keys as its RocksDB database holds them, decoded, the least
    recently used let go beyond `capacity` (the clean part of `CachedStore` and of
    `live_entities.CachedRecords`). A miss reads the database once; a key it does not hold
    (or whose value `decode` turns into ABSENT) is remembered as ABSENT."""

    def __init__(
        self,
        read: Callable[[bytes], bytes | None],
        decode: Callable[[str, bytes], Any],
        capacity: int,
    ) -> None:
        self._read = read
        self._decode = decode
        self.capacity = capacity
        self.values: OrderedDict[str, Any] = OrderedDict()
        self.reads = 0  # values read back from the database (misses)

    def get(self, key: str) -> Any:
        """The value, or ABSENT."""
        values = self.values
        if key in values:
            values.move_to_end(key)
            return values[key]
        raw = self._read(key.encode())
        self.reads += 1
        found = values[key] = ABSENT if not raw else self._decode(key, raw)
        self.trim()
        return found

    def put(self, key: str, value: Any) -> None:
        """`value` (or ABSENT) is what the database now holds for `key`."""
        self.values[key] = value
        self.trim()

    def forget(self, key: str) -> None:
        """`key` is held elsewhere now (changed, not written yet)."""
        self.values.pop(key, None)

    def decoded(self, key: str, raw: bytes) -> Any:
        """`raw`'s value (a pass over the database), from the cache if it holds one: nothing
        is cached."""
        value = self.values.get(key, ABSENT)
        return self._decode(key, raw) if value is ABSENT else value

    def trim(self) -> None:
        values = self.values
        while len(values) > self.capacity:
            values.popitem(last=False)


class CachedStore(MutableMapping[str, V], Generic[V]):
    """The values of one partition, at most `capacity` of them decoded in memory; the rest
    stay in the table (RocksDB) and are read back when asked for. For millions of keys, where
    `WriteBackStore` would hold every value decoded.

    A write-back cache like `WriteBackStore`: a change stays in memory (never evicted) until
    `flush` writes it, after the outputs it produced were delivered; only then may it be
    evicted, least recently used first. `read(key)` gives the table's value of a key of this
    partition, `scan()` every (key, value) the table holds for it (for the rare passes over
    all keys: rebuilding the wake-up index, a reload). `size` is how many keys it holds."""

    def __init__(
        self,
        table: BytesTable,
        partition: int,
        *,
        encode: Encoder[V],
        decode: Callable[[bytes], V],
        read: Callable[[bytes], bytes | None],
        scan: Callable[[], Iterable[tuple[bytes, bytes]]],
        capacity: int,
        size: int,
    ) -> None:
        self._table = table
        self.partition = partition
        self._encode = encode
        self._scan = scan
        self._size = size
        self._clean = ReadBack(read, lambda _, raw: decode(raw), capacity)
        self._changed: dict[str, V | None] = {}  # None: deleted
        # Taken (`take`) but not written yet: newer than the table.
        self._writing: dict[str, V | None] = {}
        # Too big for the changelog: kept in memory only (reported by `flush`).
        self._unwritable: dict[str, V] = {}
        self.on_oversized: Callable[[str, int], None] = log_oversized
        self.kind_of: Callable[[str], str] = lambda key: "user"

    @property
    def reads(self) -> int:
        """Values read back from the table (misses)."""
        return self._clean.reads

    def _lookup(self, key: str) -> Any:
        """The value, or ABSENT."""
        for newer in (self._changed, self._writing):
            if key in newer:
                value = newer[key]
                return ABSENT if value is None else value
        # (Never both unwritable and clean: a write puts a key in one of the two.)
        if key in self._unwritable:
            return self._unwritable[key]
        return self._clean.get(key)

    def __getitem__(self, key: str) -> V:
        value = self._lookup(key)
        if value is ABSENT:
            raise KeyError(key)
        return cast(V, value)

    def get(self, key: str, default: Any = None) -> Any:
        value = self._lookup(key)
        return default if value is ABSENT else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._lookup(key) is not ABSENT

    def __setitem__(self, key: str, value: V) -> None:
        if self._lookup(key) is ABSENT:
            self._size += 1
        self._clean.forget(key)
        self._unwritable.pop(key, None)
        self._changed[key] = value

    def __delitem__(self, key: str) -> None:
        if self._lookup(key) is ABSENT:
            raise KeyError(key)
        self._size -= 1
        self._clean.forget(key)
        self._unwritable.pop(key, None)
        self._changed[key] = None

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[str]:
        for key, _ in self.items():
            yield key

    def items(self) -> Iterator[tuple[str, V]]:  # type: ignore[override]
        """Every key and value: the table's, as changed since the last flush. A pass over
        the table, for the rare whole-partition jobs; it caches nothing."""
        # Newer than the table, newest first: a key is never both unwritable and changed
        # or being written (a change takes it out of unwritable, and a write puts it there
        # only if not changed since).
        newer: dict[str, V | None] = {**self._unwritable, **self._writing, **self._changed}
        for raw_key, raw in self._scan():
            if not raw or raw_key.startswith(b"\x00"):
                continue  # deleted, a marker or a partition's progress
            key = raw_key.decode()
            if key in newer:
                continue  # below
            yield key, self._clean.decoded(key, raw)
        for key, value in newer.items():
            if value is not None:
                yield key, value

    def values(self) -> Iterator[V]:  # type: ignore[override]
        for _, value in self.items():
            yield value

    @property
    def dirty(self) -> int:
        return len(self._changed) + len(self._writing)

    @property
    def cached(self) -> int:
        """Values held decoded (written or not)."""
        return len(self._clean.values) + self.dirty + len(self._unwritable)

    def flush(self) -> int:
        """Write changed keys to the table (in the partition's event context), then let them
        be evicted."""
        return self.write(self.take())

    def take(self) -> Changes[V]:
        """As `WriteBackStore.take`; until `write` has written them, the values taken are
        what a read of their keys finds (unless changed again)."""
        changes = list(self._changed.items())
        self._writing.update(self._changed)
        self._changed = {}
        return changes

    def write(self, changes: Changes[V]) -> int:
        """As `WriteBackStore.write`; the values written may then be evicted."""
        written = 0
        clean, writing, changed = self._clean, self._writing, self._changed
        for key, value in changes:
            raw = None if value is None else self._encode(key, value, self.partition)
            stored = write_key(self._table, key, raw, self)
            written += stored
            if key not in writing or writing[key] is not value:
                continue  # taken again since, newer: that take writes it
            del writing[key]
            if key in changed:
                continue  # changed since: newer
            if stored:
                clean.put(key, ABSENT if value is None else value)
            else:
                self._unwritable[key] = cast(V, value)
        return written


UserStore = PartitionStore | CachedStore[UserState]


def cached_user_store(table: Any, partition: int, capacity: int) -> CachedStore[UserState]:
    """User states of one partition of a Faust table on rocksdb://, at most `capacity`
    decoded in memory. Read from the partition's own RocksDB database (rocksdict; Faust's
    store keeps one per partition, holding the keys written in that partition's event
    context): a table read picks the database of Faust's current event, and a batch of
    records spans partitions. (faust-streaming is pinned; the live RocksDB test reads
    through it.)"""
    read, scan = partition_db(table, partition)

    def size() -> int:
        return sum(1 for key, value in scan() if value and not key.startswith(b"\x00"))

    return cached_user_states(
        table, partition, read=read, scan=scan, capacity=capacity, size=size()
    )


def partition_db(
    table: Any, partition: int
) -> tuple[Callable[[bytes], bytes | None], Callable[[], Iterator[tuple[bytes, bytes]]]]:
    """(read, scan) of one partition's RocksDB database of a Faust table on rocksdb://: a
    key's value, and every (key, value) but Faust's own offset key (see `cached_user_store`)."""
    faust_store = table.data
    db = faust_store._db_for_partition(partition)
    offset_key = faust_store.offset_key  # where Faust keeps the changelog offset applied

    def scan() -> Iterator[tuple[bytes, bytes]]:
        for key, value in db.items():
            if key != offset_key:
                yield key, value

    return db.get, scan


def cached_user_states(
    table: BytesTable,
    partition: int,
    *,
    read: Callable[[bytes], bytes | None],
    scan: Callable[[], Iterable[tuple[bytes, bytes]]],
    capacity: int,
    size: int,
) -> CachedStore[UserState]:
    """A `CachedStore` of user states, encoded as the states table holds them."""
    return CachedStore(
        table,
        partition,
        encode=_encode_user,
        decode=_decode_user,
        read=read,
        scan=scan,
        capacity=capacity,
        size=size,
    )


def _decode_user(raw: bytes) -> UserState:
    return load_state(raw)[1]
