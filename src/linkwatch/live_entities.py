"""The entity stage live: an agent on the signals topic, around the pure `EntityStage`.

    journeys agent (stage 1, partition p) ──signals, keyed by entity──> signals [q]
                                          ──mark (level 2, from p, W)──> every signals [q]
    entities agent (partition q) ──records──> health / profiles topics
                                 ──signals of level k+1──> signals [r]
                                 ──mark (level k+1, from q, W)──> every signals [r]

A level's watermark in partition q is the minimum of the latest marks of every partition
feeding it (stage 1's for level 2, the entity partitions' for higher levels). A partition
sends its signals before the mark that covers them, and both go to the same topic partition,
so when the mark arrives every signal it covers has arrived: the entity stage never decides
before its inputs are in, however partitions lag each other.

Delivery follows the journeys agent: outputs are delivered before the state that produced
them is written, and marks are sent last. A crash repeats signals (same id: recognised while
buffered, or refused as late once applied) and records (same id), never loses them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import orjson

from linkwatch.delivery import Send, deliver_all
from linkwatch.entities import (
    EntityRecord,
    EntityStage,
    Offered,
    dump_record,
    dump_signal,
    load_record,
    load_signal,
    signal_order,
)
from linkwatch.event_context import end_batch, event_context
from linkwatch.signals import EntityOutput, Measure, Published, Signal
from linkwatch.store import (
    MAX_VALUE_BYTES,
    BytesTable,
    WriteBackStore,
    load_partitions,
    log_oversized,
    progress_key,
)

log = logging.getLogger("linkwatch.entities")


def mark_message(level: int, source: int, watermark: int) -> bytes:
    return orjson.dumps({"mark": level, "from": source, "watermark": watermark})


def signal_message(sig: Signal) -> bytes:
    return orjson.dumps(dump_signal(sig))


async def send_signals(send: Send, signals: Iterable[Signal]) -> None:
    """Publish signals keyed by entity, and wait until the broker has them all."""
    messages = [
        {"key": sig.entity.encode(), "value": signal_message(sig), "force": True} for sig in signals
    ]
    await deliver_all(send, messages)


async def send_marks(send: Send, partitions: int, level: int, source: int, watermark: int) -> None:
    """Tell every entity partition that `source` has sent everything of `level` up to
    `watermark`."""
    value = mark_message(level, source, watermark)
    messages = [
        {"key": None, "value": value, "partition": q, "force": True} for q in range(partitions)
    ]
    await deliver_all(send, messages)


@dataclass
class LiveEntities:
    new_stage: Callable[[MutableMapping[str, EntityRecord]], EntityStage]  # over a store
    partitions: int  # of the signals topic, and of stage 1 (co-partitioned)
    records: BytesTable  # faust Table: record key → [partition, record]
    progress: Any  # faust Table (watermarks): b"entities:<q>" → marks JSON, as written before
    send_signal: Send
    send_health: Send
    send_profile: Send
    on_measures: Callable[[list[Measure]], None]
    on_offered: Callable[[Offered], None] = lambda _: None
    on_published: Callable[[list[EntityOutput]], None] = lambda _: None  # after delivery: /ui
    on_oversized: Callable[[str, int], None] = log_oversized  # (kind, bytes): too big to write
    flush_producer: Callable[[], Awaitable[None]] | None = None  # waits for every send
    stages: dict[int, EntityStage] = field(default_factory=dict)
    stores: dict[int, WriteBackStore[EntityRecord]] = field(default_factory=dict)
    # partition → level → upstream partition → latest mark
    marks: dict[int, dict[int, dict[int, int]]] = field(default_factory=dict)

    def stage(self, partition: int) -> EntityStage:
        found = self.stages.get(partition)
        if found is None:
            found = self._load(partition)
        return found

    def _load(self, partition: int) -> EntityStage:
        probe = self.new_stage({})

        def decode(key: str, raw: bytes) -> tuple[int, EntityRecord | _Waiting]:
            if key.startswith(WAITING_PREFIX):
                owner, record, signal = orjson.loads(raw)
                return owner, _Waiting(record, load_signal(signal))
            owner, data = orjson.loads(raw)
            logic = probe.logic_of(key.partition("|")[2])
            if logic is None:  # its logic was switched off: let it go
                return -1, EntityRecord(None, ())
            return owner, load_record(logic, data)

        loaded = load_partitions(self.records, {partition}, decode)[partition]
        records, stored = _with_waiting_signals(loaded, probe)
        store = EntityRecordStore(self.records, partition, records, self._encoder(probe), stored)
        store.kind_of = lambda key: key.partition("|")[2].split(":", 1)[0]  # group, link, ...
        store.on_oversized = self.on_oversized
        stage = self.new_stage(store)
        # (Before progress moved next to the records it was in the watermarks table.)
        saved = self.records.get(progress_key(partition)) or self.progress.get(
            f"entities:{partition}".encode()
        )
        progress = orjson.loads(saved) if saved else {}
        for level, value in progress.get("watermarks", {}).items():
            if int(level) in stage.watermarks:
                stage.watermarks[int(level)] = value
        self.marks[partition] = {
            int(level): {int(source): mark for source, mark in sources.items()}
            for level, sources in progress.get("marks", {}).items()
        }
        stage.rebuild_index()
        self.stages[partition] = stage
        self.stores[partition] = store
        log.info("entity partition %d ready: %d entities", partition, len(records))
        return stage

    @staticmethod
    def _encoder(probe: EntityStage) -> Callable[[str, EntityRecord, int], bytes]:
        def encode(key: str, record: EntityRecord, partition: int) -> bytes:
            logic = probe.logic_of(key.partition("|")[2])
            assert logic is not None  # only entities with a logic are ever stored
            return orjson.dumps([partition, dump_record(logic, record)])

        return encode

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self.stages.pop(partition, None)
            self.stores.pop(partition, None)
            self.marks.pop(partition, None)

    async def on_batch(self, events: Sequence[Any]) -> None:
        """Handle Faust events of signals and marks in order; deliver every output of the
        batch; then write each changed record once, and each partition's progress, in the
        event context of one of its records; send the marks for the next level last. A
        message that fails is logged and skipped: a bug costs one signal, not the stream."""
        outputs: list[EntityOutput] = []
        touched: dict[int, tuple[EntityStage, Any]] = {}  # partition → (stage, an event)
        saves: set[int] = set()
        higher_marks: list[tuple[int, int, int]] = []  # (level, from partition, watermark)
        for event in events:
            message = event.message
            partition = message.partition
            try:
                stage = self.stage(partition)
                touched[partition] = (stage, event)
                data = orjson.loads(message.value)
                if isinstance(data, dict):
                    if self._on_mark(partition, stage, data, outputs, higher_marks):
                        saves.add(partition)
                else:
                    self.on_offered(stage.offer(load_signal(data)))
            except Exception:
                log.exception("signal %s/%d@%d failed", message.topic, partition, message.offset)
        await self._deliver(outputs)
        # Only now: everything the batch caused is delivered.
        written = []
        for partition, (stage, event) in touched.items():
            store = self.stores.get(partition)
            if store is None:
                continue
            with event_context(event):
                changed = store.flush()
                if partition in saves:
                    self._save(partition, stage)
                    changed += 1
            if changed:
                written.append((partition, event))
        await end_batch(self.records, written, self.flush_producer)
        for level, source, watermark in higher_marks:
            await send_marks(self.send_signal, self.partitions, level, source, watermark)

    def _on_mark(
        self,
        partition: int,
        stage: EntityStage,
        mark: dict[str, Any],
        outputs: list[EntityOutput],
        higher_marks: list[tuple[int, int, int]],
    ) -> bool:
        """Apply a mark: what it lets the stage decide joins `outputs`, the mark it earns for
        the next level joins `higher_marks`. Whether the partition's progress changed."""
        level, source, watermark = int(mark["mark"]), int(mark["from"]), int(mark["watermark"])
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
        outputs.extend(stage.advance(level, target))
        higher = [lv for lv in stage.levels if lv > level]
        if higher:
            higher_marks.append((higher[0], partition, target))
        return True

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
        await send_signals(self.send_signal, signals)
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
            }
        )


# Keys of waiting signals start with this; record keys start with their level (a digit).
WAITING_PREFIX: Final = "~"


def waiting_key(record: str, signal_id: str) -> str:
    """The table key of a signal waiting in `record` (length-prefixed: distinct for every
    pair, whatever characters the record key and the signal id hold)."""
    return f"{WAITING_PREFIX}{len(record)}:{record}{signal_id}"


class _Waiting(NamedTuple):
    record: str
    signal: Signal


def _with_waiting_signals(
    loaded: dict[str, Any], probe: EntityStage
) -> tuple[dict[str, EntityRecord], dict[str, set[str]]]:
    """Recovered records with the signals stored under their own keys put back into them,
    and the ids of those, per record."""
    records = {key: value for key, value in loaded.items() if isinstance(value, EntityRecord)}
    waiting: dict[str, list[Signal]] = {}
    for value in loaded.values():
        if isinstance(value, _Waiting) and probe.logic_of(value.signal.entity) is not None:
            waiting.setdefault(value.record, []).append(value.signal)
    stored: dict[str, set[str]] = {}
    for key, signals in waiting.items():
        record = records.get(key, EntityRecord(None, ()))
        known = {s.signal_id for s in record.pending}
        merged = [*record.pending, *(s for s in signals if s.signal_id not in known)]
        records[key] = EntityRecord(record.state, tuple(sorted(merged, key=signal_order)))
        stored[key] = {s.signal_id for s in signals}
    return records, stored


class EntityRecordStore(WriteBackStore[EntityRecord]):
    """Entity records in the table as two kinds of keys: the record's key holds the logic's
    state, and each waiting signal has a key of its own, written once when it arrives and
    deleted once it is applied. A busy entity whose signals wait for a lagging watermark then
    costs each signal's own bytes, where a whole record rewritten per batch grew without bound
    (and with it the broker's memory)."""

    def __init__(
        self,
        table: BytesTable,
        partition: int,
        records: dict[str, EntityRecord],
        encode: Callable[[str, EntityRecord, int], bytes],
        stored: dict[str, set[str]],
    ) -> None:
        super().__init__(table, partition, records, encode)
        self._written_waiting = {key: set(ids) for key, ids in stored.items()}
        # Of each record's state as last written (a hash of its bytes): an unchanged state
        # is not written again when only its waiting signals changed.
        self._written_state: dict[str, int] = {}
        for key, record in records.items():
            if any(s.signal_id not in stored.get(key, ()) for s in record.pending):
                self._dirty.add(key)  # written by an older version, inside the record
            else:
                self._written_state[key] = hash(self._state_bytes(key, record))

    def _state_bytes(self, key: str, record: EntityRecord) -> bytes:
        return self._encode(key, EntityRecord(record.state, ()), self.partition)

    def flush(self) -> int:
        written = 0
        table = self._table
        for key in self._dirty:
            record = self._states.get(key)
            waiting = {s.signal_id: s for s in record.pending} if record is not None else {}
            before = self._written_waiting.pop(key, set())
            for signal_id in waiting.keys() - before:
                value = orjson.dumps([self.partition, key, dump_signal(waiting[signal_id])])
                table[waiting_key(key, signal_id).encode()] = value
                written += 1
            for signal_id in before - waiting.keys():
                gone = waiting_key(key, signal_id).encode()
                if gone in table:
                    del table[gone]
                    written += 1
            if waiting:
                self._written_waiting[key] = set(waiting)
            written += self._flush_state(key, record)
        self._dirty.clear()
        return written

    def _flush_state(self, key: str, record: EntityRecord | None) -> int:
        encoded = key.encode()
        if record is None:
            self._written_state.pop(key, None)
            if encoded in self._table:
                del self._table[encoded]
                return 1
            return 0
        value = self._state_bytes(key, record)
        fingerprint = hash(value)
        if self._written_state.get(key) == fingerprint:
            return 0
        if len(value) > MAX_VALUE_BYTES:
            self.on_oversized(self.kind_of(key), len(value))
            return 0
        self._table[encoded] = value
        self._written_state[key] = fingerprint
        return 1
