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
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
)
from linkwatch.event_context import event_context
from linkwatch.signals import EntityOutput, Measure, Published, Signal
from linkwatch.store import BytesTable, WriteBackStore, load_partitions, log_oversized

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
    progress: Any  # faust Table (the watermarks table): b"entities:<q>" → marks JSON
    send_signal: Send
    send_health: Send
    send_profile: Send
    on_measures: Callable[[list[Measure]], None]
    on_offered: Callable[[Offered], None] = lambda _: None
    on_published: Callable[[list[EntityOutput]], None] = lambda _: None  # after delivery: /ui
    on_oversized: Callable[[str, int], None] = log_oversized  # (kind, bytes): too big to write
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

        def decode(key: str, raw: bytes) -> tuple[int, EntityRecord]:
            owner, data = orjson.loads(raw)
            logic = probe.logic_of(key.partition("|")[2])
            if logic is None:  # its logic was switched off: let it go
                return -1, EntityRecord(None, ())
            return owner, load_record(logic, data)

        records = load_partitions(self.records, {partition}, decode)[partition]
        store: WriteBackStore[EntityRecord] = WriteBackStore(
            self.records, partition, records, self._encoder(probe)
        )
        store.kind_of = lambda key: key.partition("|")[2].split(":", 1)[0]  # group, link, ...
        store.on_oversized = self.on_oversized
        stage = self.new_stage(store)
        saved = self.progress.get(f"entities:{partition}".encode())
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
        for partition, (stage, event) in touched.items():
            store = self.stores.get(partition)
            if store is None:
                continue
            with event_context(event):
                store.flush()
                if partition in saves:
                    self._save(partition, stage)
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
        self.progress[f"entities:{partition}".encode()] = orjson.dumps(
            {
                "watermarks": {str(k): v for k, v in stage.watermarks.items() if v is not None},
                "marks": {
                    str(level): {str(s): m for s, m in sources.items()}
                    for level, sources in self.marks.get(partition, {}).items()
                },
            }
        )
