"""The entity stage live: an agent on the signals topic, around the pure `EntityStage`.

    journeys agent (stage 1, partition p) ──signals, packed by entity's partition──> signals [q]
                                          ──mark (level 2, from p, W)──> every signals [q]
    entities agent (partition q) ──records──> health / profiles topics
                                 ──signals of level k+1──> signals [r]
                                 ──mark (level k+1, from q, W)──> every signals [r]

A level's watermark in partition q is the minimum of the latest marks of every partition
feeding it (stage 1's for level 2, the entity partitions' for higher levels). A partition
sends its signals before the mark that covers them, and both go to the same topic partition,
so when the mark arrives every signal it covers has arrived: the entity stage never decides
before its inputs are in, however partitions lag each other.

Signals and marks travel packed, through one `SignalOutbox` both agents share: they are held
until the next write of states (each offset commit), then each signals partition gets one
record with every signal for it (in the partition Kafka's default partitioner gives the
entity), followed by the marks for it. Every signal thus arrives before any mark sent after
it. Delivery follows the journeys agent: outputs are delivered before the state that produced
them is written. A crash repeats signals (same id: recognised while buffered, or refused as
late once applied) and records (same id), never loses them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson

from linkwatch.delivery import Send, deliver_all
from linkwatch.disk_wakeups import DiskWakeups
from linkwatch.entities import (
    EntityRecord,
    EntityStage,
    Offered,
    dump_signal,
    load_record,
    load_signal,
    signal_order,
)
from linkwatch.event_context import end_batch, write_partitions
from linkwatch.signals import EntityOutput, Measure, Published, Signal
from linkwatch.store import (
    ABSENT,
    CLOSES_COMMIT,
    MAX_VALUE_BYTES,
    BytesTable,
    ReadBack,
    WriteBackStore,
    load_partitions,
    log_oversized,
    progress_key,
)
from linkwatch.wakeups import Wakeups

log = logging.getLogger("linkwatch.entities")

Reader = Callable[[bytes], "bytes | None"]  # a key's value in a partition's database
Scanner = Callable[[], Iterable[tuple[bytes, bytes]]]  # every (key, value) in it


def mark_message(level: int, source: int, watermark: int) -> bytes:
    """One mark as a record of its own (what versions before the outbox sent; still read)."""
    return orjson.dumps({"mark": level, "from": source, "watermark": watermark})


def signal_message(sig: Signal) -> bytes:
    """One signal as a record of its own (what versions before packing sent; still read)."""
    return orjson.dumps(dump_signal(sig))


# Most bytes of signals packed into one record: well under the broker's 1 MB message size.
PACKED_MAX_BYTES: Final = 256 * 1024
# Signals offered between two runs of the event loop (`LiveEntities._offer_all`).
YIELD_AFTER_SIGNALS: Final = 200

# An entity's signals partition (the shell's: Kafka's default partitioner on the entity).
PartitionOf = Callable[[str], int]


# (level, source partition) → the newest watermark marked for it.
Marks = dict[tuple[int, int], int]


def pack_signals(
    signals: Iterable[Signal], partition_of: PartitionOf, marks: dict[int, Marks] | None = None
) -> list[tuple[int, bytes]]:
    """Signals and marks as records: (partition, value), each record holding the signals of
    one partition in the order given, up to `PACKED_MAX_BYTES`, the partition's last record
    then its marks. A record per signal cost a produce and a consume each, over two records
    per input event; a record per mark and partition, one more per tick and partition."""
    by_partition: dict[int, list[bytes]] = {}
    encode_by_partition(signals, partition_of, by_partition)
    return pack_encoded(by_partition, marks or {})


def encode_by_partition(
    signals: Iterable[Signal], partition_of: PartitionOf, into: dict[int, list[bytes]]
) -> int:
    """Append each signal, encoded, to its partition's list in `into`; the bytes added."""
    added = 0
    for sig in signals:
        encoded = orjson.dumps(dump_signal(sig))
        into.setdefault(partition_of(sig.entity), []).append(encoded)
        added += len(encoded)
    return added


def pack_encoded(
    signals: dict[int, list[bytes]], marks: dict[int, Marks]
) -> list[tuple[int, bytes]]:
    """`pack_signals` of signals already encoded, by partition."""
    records = []
    for partition in sorted(signals.keys() | marks.keys()):
        encoded = signals.get(partition, [])
        held = (
            [[level, source, mark] for (level, source), mark in sorted(marks[partition].items())]
            if partition in marks
            else []
        )
        runs = list(bounded_runs(encoded, PACKED_MAX_BYTES)) or [range(0)]
        for run in runs:
            tail = held if run is runs[-1] else []
            records.append((partition, _packed(encoded[run.start : run.stop], tail)))
    return records


def bounded_runs(entries: Sequence[bytes], max_bytes: int) -> Iterator[range]:
    """`entries` cut into consecutive runs (index ranges) whose bytes, with a separator
    each, stay within `max_bytes`; an entry bigger than that is a run of its own."""
    start = size = 0
    for at, entry in enumerate(entries):
        if at > start and size + len(entry) > max_bytes:
            yield range(start, at)
            start, size = at, 0
        size += len(entry) + 1
    if start < len(entries):
        yield range(start, len(entries))


def _packed(encoded: list[bytes], marks: list[list[int]]) -> bytes:
    tail = b',"marks":' + orjson.dumps(marks) if marks else b""
    return b'{"signals":[' + b",".join(encoded) + b"]" + tail + b"}"


# Past this many bytes of held signals a batch sends them at once, not at the next write.
OUTBOX_MAX_BYTES: Final = 4 * PACKED_MAX_BYTES


@dataclass
class SignalOutbox:
    """Signals and marks for the signals topic, held until `flush` sends them: one record
    per partition (`pack_signals`) per flush, however many batches and ticks added to it,
    rather than one per batch and partition and one per mark and partition. Marks of one
    (level, source) only move forward, so the newest stands for those before it.

    Whoever writes states flushes first: the signals a state produced are delivered before
    it is written. A mark is added after the signals it covers, and a flush sends signals
    before marks, so no signal arrives after a mark that covers it."""

    send: Send
    partitions: int  # of the signals topic: a mark goes to each
    partition_of: PartitionOf  # where an entity's signals go
    signals: dict[int, list[bytes]] = field(default_factory=dict)
    marks: dict[int, Marks] = field(default_factory=dict)
    marked: Marks = field(default_factory=dict)  # every mark added, sent or not: the newest
    held_bytes: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # flushes go out in order

    def add_signals(self, signals: Iterable[Signal]) -> None:
        self.held_bytes += encode_by_partition(signals, self.partition_of, self.signals)

    def add_mark(self, level: int, source: int, watermark: int) -> None:
        """`source` has sent everything of `level` up to `watermark`: tell every partition."""
        for partition in range(self.partitions):
            held = self.marks.setdefault(partition, {})
            held[level, source] = max(watermark, held.get((level, source), watermark))
        newest = self.marked.get((level, source), watermark)
        self.marked[level, source] = max(watermark, newest)

    @property
    def full(self) -> bool:
        return self.held_bytes > OUTBOX_MAX_BYTES

    async def flush(self) -> None:
        """Send everything held, and wait until the broker has it all."""
        async with self.lock:
            if not self.signals and not self.marks:
                return
            records = pack_encoded(self.signals, self.marks)
            self.signals, self.marks, self.held_bytes = {}, {}, 0
            messages = [
                {"key": None, "value": value, "partition": partition, "force": True}
                for partition, value in records
            ]
            await deliver_all(self.send, messages)


@dataclass(frozen=True)
class BoundedMemory:
    """How a worker on rocksdb:// keeps its entity records bounded in memory."""

    partition_db: Callable[[int], tuple[Reader, Scanner]]  # a partition's (read, scan)
    # Records decoded at most besides those that must be (`CachedRecords`).
    cache_max: int
    wakeups_dir: Path  # the wake-up indexes, on disk
    # Records a watermark decides at most before the outputs so far are delivered and the
    # partition's records written (`_on_mark`); 0: all at once.
    fire_chunk: int = 0
    # Past this many records held that cannot be let go (`held`), stage 1 takes in no more
    # records while marks are on their way here (`room_needed`); 0: no bound.
    held_max: int = 0


@dataclass
class LiveEntities:
    # (store) or, bounded in memory, (store, wake-up indexes by level) → a stage over them
    new_stage: Callable[..., EntityStage]
    partitions: int  # of the signals topic, and of stage 1 (co-partitioned)
    records: BytesTable  # faust Table: record key → [partition, record]
    progress: Any  # faust Table (watermarks): b"entities:<q>" → marks JSON, as written before
    send_signal: Send
    send_health: Send
    send_profile: Send
    on_measures: Callable[[list[Measure]], None]
    partition_of: PartitionOf  # where an entity's signals go
    on_offered: Callable[[Offered], None] = lambda _: None
    on_published: Callable[[list[EntityOutput]], None] = lambda _: None  # after delivery: /ui
    on_oversized: Callable[[str, int], None] = log_oversized  # (kind, bytes): too big to write
    flush_producer: Callable[[], Awaitable[None]] | None = None  # waits for every send
    # Where its signals and marks wait (shared with the journeys agent); made if not given.
    outbox: SignalOutbox = field(default=None)  # type: ignore[assignment]
    stages: dict[int, EntityStage] = field(default_factory=dict)
    stores: dict[int, EntityRecordStore] = field(default_factory=dict)
    # rocksdb:// with a state cache: records bounded in memory. None: every record decoded,
    # in a dict, and a watermark decides all it passes at once.
    bounded: BoundedMemory | None = None
    # partition → level → upstream partition → latest mark
    marks: dict[int, dict[int, dict[int, int]]] = field(default_factory=dict)
    # As the journeys agent's (see `LiveJourneys`): records wait for the next offset commit.
    write_on_commit: bool = False
    unwritten: dict[int, Any] = field(default_factory=dict)  # partition → one of its events
    progress_due: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        if self.outbox is None:
            self.outbox = SignalOutbox(self.send_signal, self.partitions, self.partition_of)

    def stage(self, partition: int) -> EntityStage:
        found = self.stages.get(partition)
        if found is None:
            found = self._load(partition)
        return found

    def _load(self, partition: int) -> EntityStage:
        probe = self.new_stage({})
        # (Before progress moved next to the records it was in the watermarks table.)
        saved = self.records.get(progress_key(partition)) or self.progress.get(
            f"entities:{partition}".encode()
        )
        progress = orjson.loads(saved) if saved else {}
        watermarks = {
            int(level): value
            for level, value in progress.get("watermarks", {}).items()
            if int(level) in probe.watermarks
        }

        def decode(key: str, raw: bytes) -> tuple[int, Any]:
            if key.startswith(WAITING_PREFIX):
                return _decode_waiting(key, raw)
            owner, data, *through = orjson.loads(raw)
            logic = probe.logic_of(key.partition("|")[2])
            if logic is None:  # its logic was switched off: let it go
                return -1, EntityRecord(None, ())
            if data is None:
                return owner, _Retired(through[0] if through else None)
            return owner, _Stored(load_record(logic, data), through[0] if through else None)

        cache: CachedRecords | None = None
        wakeups: dict[int, Wakeups] | None = None
        bounded = self.bounded
        if bounded is None:
            loaded = load_partitions(self.records, {partition}, decode)[partition]
            records, waiting = _recover(loaded, probe, watermarks)
        else:
            read, scan = bounded.partition_db(partition)
            loaded, size = _load_waiting(read, scan, decode)
            records, waiting = _recover(loaded, probe, watermarks)
            size += sum(1 for key in records if not isinstance(loaded.get(key), _Stored))

            def decode_record(key: str, raw: bytes) -> EntityRecord | None:
                value = decode(key, raw)[1]
                return value.record if isinstance(value, _Stored) else None

            cache = CachedRecords(records, decode_record, read, scan, bounded.cache_max, size)
            where = bounded.wakeups_dir
            wakeups = {level: DiskWakeups(where / f"{partition}-{level}") for level in probe.levels}
        store = EntityRecordStore(
            self.records, partition, records, _state_dumper(probe), waiting, cache
        )
        store.kind_of = lambda key: key.partition("|")[2].split(":", 1)[0]  # group, link, ...
        store.on_oversized = self.on_oversized
        try:
            stage = self.new_stage(store) if wakeups is None else self.new_stage(store, wakeups)
            stage.watermarks.update(watermarks)
            stage.rebuild_index()
        except BaseException:
            for index in (wakeups or {}).values():
                index.close()  # else its database stays locked for the next try
            raise
        store.watermarks = stage.watermarks  # the stage moves them; the store writes them
        self.marks[partition] = {
            int(level): {int(source): mark for source, mark in sources.items()}
            for level, sources in progress.get("marks", {}).items()
        }
        self.stages[partition] = stage
        self.stores[partition] = store
        log.info("entity partition %d ready: %d entities", partition, len(store))
        return stage

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            stage = self.stages.pop(partition, None)
            if stage is not None:
                stage.close()
            self.unwritten.pop(partition, None)
            self.stores.pop(partition, None)
            self.marks.pop(partition, None)

    @property
    def held(self) -> int:
        """Records this worker's partitions hold that cannot be let go (`room_needed`)."""
        return sum(store.held for store in self.stores.values())

    def _marks_on_the_way(self) -> bool:
        """Whether a mark this worker sent (stage 1's, or a level's here) has yet to reach
        one of its partitions: what lets waiting signals go without more from stage 1."""
        for partition, stage in self.stages.items():
            received = self.marks.get(partition, {})
            levels = stage.watermarks  # (it takes no other level's marks)
            for (level, source), watermark in self.outbox.marked.items():
                if level in levels and received.get(level, {}).get(source, -1) < watermark:
                    return True
        return False

    def room_needed(self) -> bool:
        """Whether stage 1 should stop taking in records (`backpressure.InputGate`): more
        records are held than `held_max`, and marks are on their way here that let some go.
        Under a backlog, stage 1 otherwise runs ever further ahead of the highest level (a hop
        per level, each behind the signals queued on the topic), and every record with a
        signal between them waits in memory. Without marks on their way only stage 1's next
        one lets a record go: then it must go on."""
        held_max = self.held_max
        return bool(held_max) and self.held > held_max and self._marks_on_the_way()

    @property
    def held_max(self) -> int:
        """The bound `room_needed` keeps; 0: none."""
        return 0 if self.bounded is None else self.bounded.held_max

    async def send_marks(self) -> None:
        """Send the marks the outbox holds now, not at the next write: each level's hop would
        wait for one. (Safe: what they cover is sent first, and outputs may always go before
        the states that produced them are written.)"""
        if any(self.outbox.marks.values()):
            await self.outbox.flush()

    async def on_batch(self, events: Sequence[Any]) -> None:
        """Handle Faust events of signals and marks in order; deliver every output of the
        batch (signals and the marks for the next level to the outbox); then (at once, or
        with `write_on_commit` at the next offset commit) send what the outbox holds and
        write each changed record once, and each partition's progress, in the event context
        of one of its records. A message that fails is logged and skipped: a bug costs one
        signal, not the stream."""
        async with self.lock:
            await self._on_batch(events)

    async def write_pending(self) -> None:
        """Write every record changed since the last write (see `on_batch`)."""
        async with self.lock:
            await self.write_held()

    async def write_held(self) -> None:
        """`write_pending` for a caller that holds `lock`."""
        await self._write()

    async def _on_batch(self, events: Sequence[Any]) -> None:
        outputs: list[EntityOutput] = []
        higher_marks: list[tuple[int, int, int]] = []  # (level, from partition, watermark)
        for event in events:
            message = event.message
            partition = message.partition
            try:
                stage = self.stage(partition)
                self.unwritten[partition] = event  # the context of its writes
                data = orjson.loads(message.value)
                if isinstance(data, dict) and "signals" in data:
                    await self._offer_all(stage, data["signals"], message)
                    for level, source, watermark in data.get("marks", ()):
                        mark = (level, source, watermark)
                        if await self._on_mark(partition, stage, mark, outputs, higher_marks):
                            self.progress_due.add(partition)
                elif isinstance(data, dict):  # a mark alone, as versions before the outbox
                    mark = (data["mark"], data["from"], data["watermark"])
                    if await self._on_mark(partition, stage, mark, outputs, higher_marks):
                        self.progress_due.add(partition)
                else:
                    self.on_offered(stage.offer(load_signal(data)))
            except Exception:
                log.exception("signal %s/%d@%d failed", message.topic, partition, message.offset)
        await self._deliver(outputs)
        # After the signals they cover (`_deliver` put them in the outbox).
        for level, source, watermark in higher_marks:
            self.outbox.add_mark(level, source, watermark)
        # Only now: everything the batch caused is delivered, or held in the outbox.
        if not self.write_on_commit:
            await self.write_held()
        elif self.outbox.full:
            await self.outbox.flush()

    async def _write(self) -> None:
        finish = await self.start_write()
        await finish()

    async def start_write(self) -> Callable[[], Awaitable[None]]:
        """The part of `write_held` that needs `lock`; returns the rest (as
        `LiveJourneys.start_write`, but the records are written to the table here, under the
        lock)."""
        # The signals and marks the records' changes produced go first.
        await self.outbox.flush()

        def write(partition: int) -> int:
            store, stage = self.stores.get(partition), self.stages.get(partition)
            if store is None or stage is None:
                return 0
            changed = store.flush()
            if changed or partition in self.progress_due:  # it closes them (`commit_table`)
                self._save(partition, stage)
                changed += 1
            return changed

        written = write_partitions(self.unwritten, write)
        self.progress_due.clear()
        return functools.partial(end_batch, self.records, written, self.flush_producer)

    async def _offer_all(self, stage: EntityStage, signals: list[Any], message: Any) -> None:
        """The signals of a packed record, each on its own: a bad one costs itself only.
        A packed record holds up to a thousand: the event loop runs every
        `YIELD_AFTER_SIGNALS` of them, so the journeys agent handles records meanwhile (safe
        mid-batch, as there: nothing of the batch is acked yet)."""
        for index, data in enumerate(signals):
            if index and not index % YIELD_AFTER_SIGNALS:
                await asyncio.sleep(0)
            try:
                self.on_offered(stage.offer(load_signal(data)))
            except Exception:
                log.exception(
                    "signal %d of %s/%d@%d failed",
                    index,
                    message.topic,
                    message.partition,
                    message.offset,
                )

    async def _on_mark(
        self,
        partition: int,
        stage: EntityStage,
        mark: tuple[Any, Any, Any],
        outputs: list[EntityOutput],
        higher_marks: list[tuple[int, int, int]],
    ) -> bool:
        """Apply a mark, (level, source, watermark): `source` has sent everything of `level`
        up to `watermark`. What it lets the stage decide joins `outputs`, the mark it earns
        for the next level joins `higher_marks`. Whether the partition's progress changed."""
        level, source, watermark = (int(part) for part in mark)
        if level not in stage.watermarks:
            return False
        sources = self.marks.setdefault(partition, {}).setdefault(level, {})
        if watermark <= sources.get(source, watermark - 1):
            return False  # a redelivered or older mark
        sources[source] = watermark
        if len(sources) < self.partitions:
            return True  # someone upstream has not reported yet: nothing can be decided
        target = min(sources.values())
        current = stage.watermarks[level]
        if current is not None and target <= current:
            return True
        fire_chunk = 0 if self.bounded is None else self.bounded.fire_chunk
        for n, chunk in enumerate(stage.advance_chunks(level, target, fire_chunk)):
            if n:
                await self._write_decided(partition, outputs)
            outputs.extend(chunk)
        higher = [lv for lv in stage.levels if lv > level]
        if higher:
            higher_marks.append((higher[0], partition, target))
        return True

    async def _write_decided(self, partition: int, outputs: list[EntityOutput]) -> None:
        """A watermark passed more records than a chunk: what the batch has decided so far is
        delivered, and the partition's changed records written, before the next chunk. Not
        its progress: until the whole watermark is applied its records stay unclosed
        (`commit_table`), so a crash recovers the partition as before the mark, and the
        records written meanwhile carry their own watermark (`_recover`)."""
        await self._deliver(outputs)
        outputs.clear()
        await self.outbox.flush()
        store = self.stores[partition]
        write_partitions({partition: self.unwritten[partition]}, lambda _: store.flush())

    async def _deliver(self, outputs: list[EntityOutput]) -> None:
        signals = [out for out in outputs if isinstance(out, Signal)]
        measures = [out for out in outputs if isinstance(out, Measure)]
        by_topic: dict[str, list[dict[str, Any]]] = {"health": [], "profiles": []}
        for out in outputs:
            if isinstance(out, Published):
                by_topic[out.topic].append(
                    {
                        "key": out.key.encode(),
                        "value": orjson.dumps(out.record.model_dump(mode="json")),
                        "force": True,
                    }
                )
        await deliver_all(self.send_health, by_topic["health"])
        await deliver_all(self.send_profile, by_topic["profiles"])
        self.on_published(outputs)
        self.outbox.add_signals(signals)
        if measures:
            self.on_measures(measures)

    def _save(self, partition: int, stage: EntityStage) -> None:
        # After the partition's records, in their changelog partition (`progress_key`).
        self.records[progress_key(partition)] = orjson.dumps(
            {
                "watermarks": {str(k): v for k, v in stage.watermarks.items() if v is not None},
                "marks": {
                    str(level): {str(s): m for s, m in sources.items()}
                    for level, sources in self.marks.get(partition, {}).items()
                },
                CLOSES_COMMIT: True,
            }
        )


# Keys of waiting signals start with this; record keys start with their level (a digit).
WAITING_PREFIX: Final = "~"
# Of a key holding the signals a flush found waiting: "~w<partition>:<number>".
PACKED_WAITING: Final = WAITING_PREFIX + "w"
# Most bytes of signals in one such key (a changelog record must fit the broker's limit).
WAITING_MAX_BYTES: Final = 512 * 1024


def waiting_key(record: str, signal_id: str) -> str:
    """The key of one waiting signal, as versions before `EntityRecordStore` packed them
    wrote it (read, and deleted once moved)."""
    return f"{WAITING_PREFIX}{len(record)}:{record}{signal_id}"


def packed_waiting_key(partition: int, number: int) -> str:
    return f"{PACKED_WAITING}{partition}:{number}"


class _Waiting(NamedTuple):
    record: str
    signal: Signal


class _Stored(NamedTuple):
    """A record as written, and the watermark of its level when it was (see `_recover`)."""

    record: EntityRecord
    through: int | None


class _Retired(NamedTuple):
    """A record deleted by the flush that wrote this: its level's watermark then."""

    through: int | None


def _decode_waiting(key: str, raw: bytes) -> tuple[int, list[_Waiting]]:
    if key.startswith(PACKED_WAITING):
        owner, entries = orjson.loads(raw)
        return owner, [_Waiting(record, load_signal(signal)) for record, signal in entries]
    owner, record, signal = orjson.loads(raw)  # one signal (an older version wrote it)
    return owner, [_Waiting(record, load_signal(signal))]


def _state_dumper(probe: EntityStage) -> Callable[[str, Any], Any]:
    def dump(key: str, state: Any) -> Any:
        logic = probe.logic_of(key.partition("|")[2])
        assert logic is not None  # only entities with a logic are ever stored
        return logic.dump(state)

    return dump


def _level_of(key: str) -> int:
    return int(key.partition("|")[0])


@dataclass
class Recovered:
    """Where the recovered waiting signals are stored (see `EntityRecordStore`)."""

    # record key → signal id → the key holding it
    stored: dict[str, dict[str, str]] = field(default_factory=dict)
    left: dict[str, int] = field(default_factory=dict)  # packed key → its signals still waiting
    stale: set[str] = field(default_factory=set)  # keys to delete: all theirs applied, or moved
    numbers: int = 0  # the next packed key's number


def _recover(
    loaded: dict[str, Any], probe: EntityStage, watermarks: dict[int, int]
) -> tuple[dict[str, EntityRecord], Recovered]:
    """Records with the signals still waiting for them put back in. A stored signal that
    its record's level has passed was applied (or refused) before the crash: passed, that
    is, by the watermark its record was written with, or by the partition's progress. Each
    record carries its own so that a restart that recovered a record but not the progress
    written after it does not apply its signals twice."""
    records: dict[str, EntityRecord] = {}
    through: dict[str, int] = {}
    for key, value in loaded.items():
        if isinstance(value, _Stored | _Retired) and value.through is not None:
            through[key] = value.through
        if isinstance(value, _Stored):
            records[key] = value.record
    found = Recovered()
    waiting: dict[str, dict[str, Signal]] = {}
    for key, value in loaded.items():
        if isinstance(value, _Retired):
            found.stale.add(key)  # its watermark has served (above)
        if not isinstance(value, list):
            continue
        packed = key.startswith(PACKED_WAITING)
        if packed:
            found.numbers = max(found.numbers, int(key.rpartition(":")[2]) + 1)
        kept = 0
        for record, sig in value:
            passed = max(through.get(record, -1), watermarks.get(_level_of(record), -1))
            if sig.ts <= passed or probe.logic_of(sig.entity) is None:
                continue
            waiting.setdefault(record, {})[sig.signal_id] = sig
            if packed:
                found.stored.setdefault(record, {})[sig.signal_id] = key
                kept += 1
        if kept:
            found.left[key] = kept
        else:  # all applied; or one signal an older version wrote: moved at the next flush
            found.stale.add(key)
    for key, signals in waiting.items():
        record = records.get(key, EntityRecord(None, ()))
        known = {s.signal_id for s in record.pending}
        merged = [*record.pending, *(s for s in signals.values() if s.signal_id not in known)]
        records[key] = EntityRecord(record.state, tuple(sorted(merged, key=signal_order)))
    return records, found


def _load_waiting(
    read: Reader, scan: Scanner, decode: Callable[[str, bytes], tuple[int, Any]]
) -> tuple[dict[str, Any], int]:
    """What `_recover` needs of a partition's database, without decoding every record into
    memory: the waiting signals, the records they wait for, retired records and records an
    older version wrote with their signals inside. And how many records it holds."""
    loaded: dict[str, Any] = {}
    wanted: set[str] = set()
    size = 0
    for raw_key, raw in scan():
        if not raw or raw_key.startswith(b"\x00"):
            continue
        key = raw_key.decode()
        if key.startswith(WAITING_PREFIX):
            _, waiting = _decode_waiting(key, raw)
            loaded[key] = waiting
            wanted.update(entry.record for entry in waiting)
            continue
        data = orjson.loads(raw)[1]
        if data is None:
            loaded[key] = decode(key, raw)[1]  # retired
        elif data[1]:  # signals inside: decoded, to be moved out
            loaded[key] = decode(key, raw)[1]
            size += isinstance(loaded[key], _Stored)
        else:
            size += 1
    for key in wanted - loaded.keys():
        value = read(key.encode())
        if value:
            loaded[key] = decode(key, value)[1]
    return loaded, size


class CachedRecords(MutableMapping[str, EntityRecord]):
    """One partition's records, decoded in memory only while they must be, and at most
    `capacity` more: on rocksdb:// with millions of entities (a tier record per user),
    where a dict would hold every one.

    Held (never evicted): records changed since the last flush, and records with signals
    waiting (the signals are in packed keys, not in the record's value, so the value read
    back would lack them) or too big to write. The rest are read back from the partition's
    database (`store.ReadBack`) when needed, the least recently used beyond `capacity` let
    go. `EntityRecordStore.flush` tells it what the table holds after each write
    (`written`)."""

    def __init__(
        self,
        held: dict[str, EntityRecord],
        decode: Callable[[str, bytes], EntityRecord | None],
        read: Reader,
        scan: Scanner,
        capacity: int,
        size: int,
    ) -> None:
        self._held = dict(held)
        self._gone: set[str] = set()  # deleted, not written yet: the table still holds them

        def decode_or_absent(key: str, raw: bytes) -> Any:
            record = decode(key, raw)
            return ABSENT if record is None else record

        self._clean = ReadBack(read, decode_or_absent, capacity)
        self._scan = scan
        self._size = size

    @property
    def reads(self) -> int:
        """Values read back from the database (misses)."""
        return self._clean.reads

    def get(self, key: str, default: Any = None) -> Any:
        held = self._held.get(key)
        if held is not None:
            return held
        if key in self._gone:
            return default
        found = self._clean.get(key)
        return default if found is ABSENT else found

    def __getitem__(self, key: str) -> EntityRecord:
        found: EntityRecord | None = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __setitem__(self, key: str, record: EntityRecord) -> None:
        if self.get(key) is None:
            self._size += 1
        self._held[key] = record
        self._clean.forget(key)
        self._gone.discard(key)

    def __delitem__(self, key: str) -> None:
        if self.get(key) is None:
            raise KeyError(key)
        self._size -= 1
        self._held.pop(key, None)
        self._clean.forget(key)
        self._gone.add(key)

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[str]:
        for key, _ in self.items():
            yield key

    def items(self) -> Iterator[tuple[str, EntityRecord]]:  # type: ignore[override]
        """Every record: a pass over the database (for rebuilding the wake-up index), the
        held ones as they are now. It caches nothing."""
        held, gone = self._held, self._gone
        for raw_key, raw in self._scan():
            if not raw or raw_key.startswith((b"\x00", WAITING_PREFIX.encode())):
                continue
            key = raw_key.decode()
            if key in held or key in gone:
                continue
            record = self._clean.decoded(key, raw)
            if record is not ABSENT:
                yield key, record
        yield from list(held.items())

    @property
    def cached(self) -> int:
        """Records held decoded (a pass over the cache: read at scrapes, not per record)."""
        clean = self._clean.values.values()
        return len(self._held) + sum(1 for record in clean if record is not ABSENT)

    @property
    def capacity(self) -> int:
        return self._clean.capacity

    @property
    def held(self) -> int:
        """Records that cannot be let go: changed, with signals waiting, or too big."""
        return len(self._held)

    def written(self, key: str, record: EntityRecord | None, stored: bool) -> None:
        """A flush wrote `record` (None: deleted) to the table, if `stored` (else it was too
        big): held no longer, unless it still has signals waiting or was not stored."""
        if record is None:
            self._gone.discard(key)
            self._clean.put(key, ABSENT)
        elif stored and not record.pending:
            self._held.pop(key, None)
            self._clean.put(key, record)


class EntityRecordStore(WriteBackStore[EntityRecord]):
    """Entity records in the table. A record's key holds the logic's state, and the
    watermark of its level when written; the signals waiting for that watermark are written
    once when they arrive, all those of one flush under one key (`packed_waiting_key`),
    which is deleted once every one of them has been applied. A busy entity whose signals
    wait for a lagging watermark then costs each signal's own bytes once, where a record
    rewritten with its signals per batch grew without bound (and with it the broker's
    memory), and a key per signal cost two changelog records per signal.

    Order within a flush: new waiting signals, then the records, then the deletions (a
    packed key only after the records its signals were applied to). A restart that
    recovers part of a flush finds a record's own watermark next to it (`_recover`)."""

    def __init__(
        self,
        table: BytesTable,
        partition: int,
        records: dict[str, EntityRecord],
        dump_state: Callable[[str, Any], Any],
        recovered: Recovered | None = None,
        cache: CachedRecords | None = None,
    ) -> None:
        """`records`: every record, or with `cache` (which holds them) those recovered with
        signals waiting."""
        super().__init__(table, partition, records if cache is None else cache, self._encode_record)
        self._cache = cache
        recovered = recovered or Recovered()
        self._dump_state = dump_state
        self.watermarks: dict[int, int | None] = {}  # the stage's, by level
        self._stored = recovered.stored
        self._left = recovered.left
        self._stale = set(recovered.stale)
        self._number = recovered.numbers
        # Of each record's state as last written (a hash of its bytes): an unchanged state
        # is not written again when only its waiting signals changed.
        # Bounded with a cache (`_remember`): a record whose fingerprint was let go is written
        # again even if unchanged, which costs a write, not a signal.
        self._written_state: dict[str, int] = {}
        for key, record in records.items():
            stored = self._stored.get(key, {})
            if any(s.signal_id not in stored for s in record.pending):
                self._dirty.add(key)  # its waiting signals are not where this version keeps them
            else:
                self._remember(key, hash(self._state_bytes(key, record)))

    def items(self) -> Iterator[tuple[str, EntityRecord]]:  # type: ignore[override]
        return iter(self._states.items())

    @property
    def cached(self) -> int:
        return len(self._states) if self._cache is None else self._cache.cached

    @property
    def reads(self) -> int:  # type: ignore[override]
        return 0 if self._cache is None else self._cache.reads

    @property
    def held(self) -> int:
        """Records held in memory that cannot be let go (all of them without a cache)."""
        return len(self._states) if self._cache is None else self._cache.held

    def _remember(self, key: str, fingerprint: int) -> None:
        written = self._written_state
        if self._cache is None:
            written[key] = fingerprint
            return
        written.pop(key, None)  # to the end: least recently written first out
        written[key] = fingerprint
        if len(written) > self._cache.capacity + len(self._dirty):
            del written[next(iter(written))]

    def _encode_record(self, key: str, record: EntityRecord, partition: int) -> bytes:
        return self._state_bytes(key, record)

    def _state_bytes(self, key: str, record: EntityRecord) -> bytes:
        state = None if record.state is None else self._dump_state(key, record.state)
        return orjson.dumps([self.partition, [state, []]])

    def flush(self) -> int:
        table = self._table
        written = 0
        # Deleted only now: written by an earlier flush, whose progress is durable by now.
        stale, self._stale = self._stale, set()
        arrived: list[tuple[str, Signal]] = []
        emptied: list[str] = []
        changed: list[str] = []
        for key in self._dirty:
            record = self._states.get(key)
            waiting = {s.signal_id: s for s in record.pending} if record is not None else {}
            stored = self._stored.setdefault(key, {})
            arrived.extend((key, waiting[i]) for i in waiting.keys() - stored.keys())
            for signal_id in stored.keys() - waiting.keys():
                where = stored.pop(signal_id)
                self._left[where] -= 1
                if not self._left[where]:
                    del self._left[where]
                    emptied.append(where)
            if not stored:
                del self._stored[key]
            changed.append(key)
        self._dirty.clear()
        written += self._write_arrived(arrived)
        cache = self._cache
        for key in changed:
            record = self._states.get(key)
            count, kept = self._flush_state(key, record)
            written += count
            if cache is not None:
                cache.written(key, record, kept)
        for key in sorted(stale):  # retired records, and keys with nothing left to wait
            if key not in self._states and key.encode() in table:  # (not back since)
                del table[key.encode()]
                written += 1
        for where in emptied:
            del table[where.encode()]
            written += 1
        return written

    def _write_arrived(self, arrived: list[tuple[str, Signal]]) -> int:
        """The signals that came to wait since the last flush, in as few keys as fit."""
        entries = [orjson.dumps([key, dump_signal(sig)]) for key, sig in arrived]
        written = 0
        for run in bounded_runs(entries, WAITING_MAX_BYTES):
            where = packed_waiting_key(self.partition, self._number)
            self._number += 1
            value = b"[%d,[" % self.partition + b",".join(entries[run.start : run.stop]) + b"]]"
            self._table[where.encode()] = value
            for key, sig in arrived[run.start : run.stop]:
                self._stored.setdefault(key, {})[sig.signal_id] = where
            self._left[where] = len(run)
            written += 1
        return written

    def _flush_state(self, key: str, record: EntityRecord | None) -> tuple[int, bool]:
        """Keys written, and whether the table now holds the record (False: too big)."""
        encoded = key.encode()
        through = self.watermarks.get(_level_of(key))
        if record is None:
            self._written_state.pop(key, None)
            if encoded not in self._table:
                return 0, True
            # Not deleted yet: until the progress written after it is durable, what it held
            # through says which of its stored signals were applied (see `_recover`).
            self._table[encoded] = orjson.dumps([self.partition, None, through])
            self._stale.add(key)
            return 1, True
        value = self._state_bytes(key, record)
        fingerprint = hash(value)
        if self._written_state.get(key) == fingerprint:
            return 0, True
        if len(value) > MAX_VALUE_BYTES:
            self.on_oversized(self.kind_of(key), len(value))
            return 0, False
        self._table[encoded] = value[:-1] + b",%d]" % through if through is not None else value
        self._remember(key, fingerprint)
        return 1, True
