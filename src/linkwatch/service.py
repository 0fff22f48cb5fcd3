"""The live worker: Faust agents, tables, timers and web views around the pure engine.

Data flow for one partition number p (every input topic, the tick topic and the state table
are co-partitioned, so one worker owns all of p):

    events.* [p] ─┐
                  ├─> agent ─> PartitionProcessor(p) ─> triggers / dead letters
    ticks [p] ────┘                    │
                                       └─> states table [p] (changelog): user states,
                                           then the partition's progress (watermark)

A record may carry a batch of one user's events (`codec.decode_message`): they are handled in
order, exactly as if each had come in a record of its own, and a bad one is dead-lettered alone.

Deadlines fire from ticks: a timer sends a tick to each partition this worker owns, and the
agent handles it like an event. State is then only ever written in the partition's event
context (RocksDB tables require it), and ticks are replayed after a crash like any record.

Delivery: the agent takes records in batches (`take_events`). A batch's triggers are delivered
(broker-acknowledged) before any state change of the batch is written, and Faust acks the
batch's records only after that. Changed states wait for the next offset commit, which writes
each of them once however many batches touched it, before it chooses the offsets to commit,
and waits for those writes to be acknowledged before it commits them (`write_before_commits`;
the agents go on meanwhile); Faust flushes the producer before it commits. A crash can therefore
repeat a trigger (same `trigger_id`), never lose one: it replays what came since the last
commit.

Signals and marks for the entity stage wait in an outbox for the next write of states, then
go packed, one record per signals partition (`live_entities.SignalOutbox`), not one record
per signal, batch or mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, NamedTuple, Protocol, cast

import faust
import orjson
from aiokafka.partitioner import DefaultPartitioner
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import EventT
from prometheus_client import CollectorRegistry

from linkwatch.backpressure import InputGate
from linkwatch.codec import Batch, BatchLimits, decode_message
from linkwatch.commit_table import CommitTable
from linkwatch.deadletters import DeadLetter, KafkaSource
from linkwatch.delivery import deliver_all
from linkwatch.disk_wakeups import DiskWakeups
from linkwatch.engine import JourneyEngine, Output
from linkwatch.entities import (
    EntityStage,
    Features,
    Offered,
    derive_signals,
    entity_logics,
    features_of,
)
from linkwatch.errors import RecordRejected, RejectReason
from linkwatch.event_context import end_batch, event_context
from linkwatch.events import Event, parse_ts
from linkwatch.faust_sensor import setup_faust_sensor
from linkwatch.hotreload import JourneysWatcher
from linkwatch.journeys import JourneySet, load_journeys, parse_duration
from linkwatch.live_entities import BoundedMemory, LiveEntities, PartitionOf, SignalOutbox
from linkwatch.logs import traceback_without_text, user_ref, user_ref_key
from linkwatch.metrics import Metrics
from linkwatch.partition import Backlog, PartitionProcessor
from linkwatch.producer_buffer import flush_sent, install_lean_buffer
from linkwatch.recovery_watch import RecoveryWatchdog
from linkwatch.reload import Shapes, dump_shapes, load_shapes, shapes_of
from linkwatch.settings import Settings
from linkwatch.signals import ENTITY_LEVEL
from linkwatch.state import UserState
from linkwatch.store import (
    CLOSES_COMMIT,
    CachedStore,
    Changes,
    PartitionStore,
    UserStore,
    cached_user_store,
    load_partitions,
    log_oversized,
    partition_db,
    progress_key,
)
from linkwatch.stream_resume import skipped_offsets
from linkwatch.ticks import TickPacer
from linkwatch.triggers import Resolution, Trigger
from linkwatch.wakeups import Wakeups
from linkwatch.webui import DATA_HEADERS, WebUI, asset

log = logging.getLogger("linkwatch.service")

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


# While handling a batch, the agent lets the event loop run (web probes, /metrics, timers)
# after this many events of batch records: LINKWATCH_BATCH_MAX records of up to
# LINKWATCH_BATCH_RECORD_MAX_EVENTS events each could otherwise hold it for tens of seconds.
# Safe mid-batch: Faust revokes a partition only once the batch is acked. Records of one
# event do not count, so their batches run as before.
YIELD_AFTER_EVENTS = 2000
# A write lets the event loop run after encoding and handing this many states to the table,
# so that records keep being handled while a commit writes.
WRITE_SLICE = 200
# A tick not read back this long after it was sent is taken for lost and sent again
# (`ticks.TickPacer`): far beyond a healthy broker's round trip, short beside a deadline.
TICK_RESEND_AFTER_MS = 30_000


def wall_ms() -> int:
    return int(time.time() * 1000)


def _raw_of(message: Any, batch: Batch | None, index: int | None) -> bytes:
    """What a dead letter keeps: the record's bytes, or those of its event at `index`."""
    if batch is not None and index is not None:
        return batch.raw_of(index)
    value: bytes | None = message.value
    return value or b""


@dataclass
class LiveJourneys:
    """Everything the worker holds per assigned partition, and how records reach it."""

    settings: Settings
    journeys: JourneySet
    metrics: Metrics
    states: Any  # faust Table: user_id bytes → state bytes
    watermarks: Any  # faust Table: partition (str) → progress JSON
    triggers_topic: Any
    dlq_topic: Any
    engine: JourneyEngine = field(init=False)
    shapes: Shapes = field(init=False)  # of `journeys`: stored with each partition's progress
    kind_of_topic: dict[str, str] = field(init=False)
    processors: dict[int, PartitionProcessor] = field(default_factory=dict)
    stores: dict[int, UserStore] = field(default_factory=dict)
    # Offset of the last record handled per (topic, partition), to tell backlog from silence.
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    highwater: Any = None  # (TP) -> next offset to be written; set once the consumer exists
    committed: Any = None  # (TP) -> offset committed for it (the next to handle), or None
    user_key: bytes = b""  # of `user_ref`, for log lines about one user's record
    assigned: Callable[[], set[int]] | None = None  # partitions this worker owns now
    # Where signals and marks for the entity stage wait to be sent (None: no entity stage).
    signal_outbox: SignalOutbox | None = None
    features: Features = field(init=False)
    marked: dict[int, int] = field(default_factory=dict)  # partition → last mark sent
    saved: dict[int, int | None] = field(default_factory=dict)  # partition → watermark saved
    on_published: Callable[[list[Output]], None] = lambda _: None  # after delivery: /ui
    on_tick_read: Callable[[int], None] = lambda _: None  # a partition's tick was read
    unknown_lag_grace_ms: int = 30_000  # see `_backlog_of`
    flush_producer: Callable[[], Awaitable[None]] | None = None  # waits for every send
    batch_limits: BatchLimits = field(init=False)
    batched_events: int = 0  # events of batch records handled since the loop last ran
    # States wait for the next offset commit (`write_pending`, called by `write_before_commits`)
    # rather than being written at the end of each batch.
    write_on_commit: bool = False
    # Partition → one of its records handled since the last write (the context of the write),
    # and the partitions whose progress must be written with their states.
    unwritten: dict[int, EventT[Any]] = field(default_factory=dict)
    progress_due: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # a batch, or a write: never both
    # The latest write's states going into the table (`_write_taken`); the next waits for it.
    writing: asyncio.Future[list[tuple[int, Any]]] | None = None

    def __post_init__(self) -> None:
        self.engine = JourneyEngine(self.journeys)
        self.shapes = shapes_of(self.journeys)
        self.features = features_of(self.journeys)
        self.kind_of_topic = {topic: kind for kind, topic in self.settings.input_topics.items()}
        self.user_key = user_ref_key(self.settings)
        self.batch_limits = self.settings.batch_limits

    def reload(self, journeys: JourneySet) -> None:
        """Run `journeys` from now on. Each loaded partition switches in its own event context,
        at the start of its next record or tick (`on_event`); partitions loaded later start
        with them."""
        if self.settings.allowed_lateness is not None:
            lateness = parse_duration(self.settings.allowed_lateness)
            journeys = replace(journeys, allowed_lateness_ms=lateness)
        self.journeys = journeys
        self.engine = JourneyEngine(journeys)
        self.shapes = shapes_of(journeys)
        self.metrics.holdout_percent = journeys.suppression.holdout_percent

    # -- partitions ------------------------------------------------------------------------

    def processor(self, partition: int, now: int) -> PartitionProcessor:
        found = self.processors.get(partition)
        if found is None:
            found = self._load(partition, now)
        return found

    def _load(self, partition: int, now: int) -> PartitionProcessor:
        """First record of a newly assigned partition: rebuild it, and every other partition
        assigned but not loaded yet, from the recovered table in one pass over it."""
        owned = self.assigned() if self.assigned is not None else set()
        wanted = (owned - set(self.processors)) | {partition}
        for number, store in self._stores_of(wanted).items():
            store.on_oversized = oversized_counter(self.metrics)
            processor = PartitionProcessor(
                self.engine,
                store,
                idle_timeout_ms=self.settings.idle_timeout_ms,
                started_at=now,
                sources=self.settings.input_topics.values(),
                stall_ms=self.settings.stall_ms,
                fire_limit=self.settings.fire_chunk or None,
                **self._wakeups_of(number, store),
            )
            # (Before progress moved next to the states it was in the watermarks table.)
            progress = self.states.get(progress_key(number)) or self.watermarks.get(
                str(number).encode()
            )
            saved = orjson.loads(progress) if progress else {}
            processor.restore(saved.get("watermark"), saved.get("sources", {}), now)
            # States written under other journeys (before a restart, or by a worker that had
            # not reloaded yet) give up what the current ones removed or changed.
            written_under = load_shapes(saved["journeys"]) if "journeys" in saved else None
            retired = processor.reconfigure(self.engine, since=written_under)
            if retired:
                self.metrics.count_outputs(retired)
                log.info("partition %d: %d open instances retired", number, len(retired))
            self.processors[number] = processor
            self.stores[number] = store
            log.info(
                "partition %d ready: %d users, watermark %s",
                number,
                len(store),
                processor.watermark,
            )
        self._reset_active()
        return self.processors[partition]

    def _stores_of(self, partitions: set[int]) -> dict[int, UserStore]:
        """The stores of newly assigned partitions: every state decoded from the recovered
        table in one pass over it, or on RocksDB with `state_cache_max`, a bounded cache over
        each partition's database."""
        limit = self.settings.state_cache_max
        if not limit or not self.settings.on_rocksdb:
            return {
                number: PartitionStore(self.states, number, states)
                for number, states in load_partitions(self.states, partitions).items()
            }
        return {number: cached_user_store(self.states, number, limit) for number in partitions}

    def _wakeups_of(self, partition: int, store: UserStore) -> dict[str, Wakeups]:
        """A store bounded in memory gets its wake-up indexes on disk too (local, rebuilt
        from the states on every load): else they would hold an entry per user."""
        if not isinstance(store, CachedStore):
            return {}
        where = self.settings.data_dir / "wakeups" / f"{self.settings.app_id}-{partition}"
        return {
            "wakeups": DiskWakeups(where / "deadlines"),
            "expiries": DiskWakeups(where / "expiries"),
        }

    def forget(self, partitions: set[int]) -> None:
        """Revoked partitions: another worker owns them now (their state is in the table:
        `write_pending` first)."""
        for partition in partitions:
            gone = self.processors.pop(partition, None)
            if gone is not None:
                gone.close()
            self.unwritten.pop(partition, None)
            self.stores.pop(partition, None)
            self.metrics.forget_partition(partition)
        # What we handled there is history: if they come back, the group has moved on.
        for topic, partition in list(self.offsets):
            if partition in partitions:
                del self.offsets[topic, partition]
        self._reset_active()

    def _reset_active(self) -> None:
        counts: Counter[str] = Counter()
        for processor in self.processors.values():
            counts.update(processor.open_counts)
        self.metrics.set_active(dict(counts))

    # -- records ---------------------------------------------------------------------------

    async def on_event(self, event: EventT[Any]) -> None:
        await self.on_batch([event])

    async def on_batch(self, events: Sequence[EventT[Any]]) -> None:
        """Handle a batch of records and ticks, in order, then deliver every output of the
        batch; only then may the states it changed be written (in their partitions' event
        contexts): at the end of the batch, or with `write_on_commit` at the next offset
        commit, which writes them before it commits anything (`write_before_commits`). The
        agent acks the batch after this returns, so no offset is committed before the state
        it moved past is written: a crash replays everything since the last commit."""
        async with self.lock:
            await self._on_batch(events)

    async def _on_batch(self, events: Sequence[EventT[Any]]) -> None:
        now = wall_ms()
        outputs: list[Output] = []
        letters: list[dict[str, Any]] = []
        ticked: set[int] = set()
        last_of: dict[int, EventT[Any]] = {}  # partition → its last record in the batch
        backlogs: dict[PartitionProcessor, Backlog] = {}  # see `_backlog_of`
        for event in events:
            message = event.message
            partition = message.partition
            processor = self.processor(partition, now)
            # Reloaded journeys take over here, where this partition's state may be written.
            if processor.engine is not self.engine:
                outputs.extend(self._reconfigure(partition, processor))
                self.progress_due.add(partition)
            if processor.behind:
                await self._catch_up(partition, processor, event, outputs, letters, now)
            kind = self.kind_of_topic.get(message.topic)
            if kind is not None:
                self._check_gap(message, partition)
            self.offsets[message.topic, partition] = message.offset
            backlog = backlogs.get(processor)
            if backlog is None:
                backlog = backlogs[processor] = self._backlog_of(
                    partition, message.tp, processor, now
                )
            if kind is None:  # a tick
                self.on_tick_read(partition)
                outputs.extend(processor.on_tick(now, backlog))
                ticked.add(partition)
            else:
                outputs.extend(self._on_record(processor, kind, message, now, backlog, letters))
            self.unwritten[partition] = event  # the context of its writes
            last_of[partition] = event
            if self.batched_events >= YIELD_AFTER_EVENTS:
                self.batched_events = 0
                await asyncio.sleep(0)
        for partition, event in last_of.items():
            behind = self.processors.get(partition)
            if behind is not None and behind.behind:
                await self._catch_up(partition, behind, event, outputs, letters, now)
        await self._deliver(outputs, letters, now)
        for partition in sorted(ticked):  # after the signals they cover
            ticked_processor = self.processors.get(partition)
            if ticked_processor is not None:
                self._mark(partition, ticked_processor, now)
        # Only now, with every trigger delivered, may the states that produced them be written
        # (their signals first: `_write`).
        self.progress_due |= ticked
        if not self.write_on_commit:
            await self._write(now)
        elif self.signal_outbox is not None and self.signal_outbox.full:
            await self.signal_outbox.flush()

    async def _deliver(
        self, outputs: list[Output], letters: list[dict[str, Any]], now: int
    ) -> None:
        """Deliver the dead letters and outputs gathered (then forgotten): before the
        offsets of their records can be committed, and before the states that produced them
        are written."""
        if letters:
            await deliver_all(self.dlq_topic.send, letters)
            letters.clear()
        if outputs:
            self.metrics.count_outputs(outputs)
            await self._publish(outputs, now)
            if self.signal_outbox is not None:
                self.signal_outbox.add_signals(derive_signals(outputs, self.features))
            outputs.clear()

    async def _catch_up(
        self,
        partition: int,
        processor: PartitionProcessor,
        event: EventT[Any],
        outputs: list[Output],
        letters: list[dict[str, Any]],
        now: int,
    ) -> None:
        """A partition whose watermark jumped past more deadlines than it decides at once
        (`fire_chunk`) decides them chunk by chunk, and before each next chunk delivers
        everything gathered and writes the states changed: a million deadlines passing at
        once hold one chunk in memory, not a million states and triggers. Everything is
        written in order as at a batch's end (outputs first), only sooner; `event`, one of
        the partition's records, is the context of its writes if it has none yet."""
        self.unwritten.setdefault(partition, event)
        outputs.extend(processor.catch_up())
        while processor.behind:
            await self._deliver(outputs, letters, now)
            await self._write(now)
            if self.processors.get(partition) is not processor:
                return  # revoked meanwhile: its new owner takes over from what was written
            self.metrics.catch_up_chunks.inc()
            outputs.extend(processor.catch_up())

    async def write_pending(self) -> None:
        """Write every state changed since the last write (see `on_batch`)."""
        async with self.lock:
            await self.write_held()

    async def write_held(self) -> None:
        """`write_pending` for a caller that holds `lock`."""
        await self._write(wall_ms())

    async def start_write(self) -> Callable[[], Awaitable[None]]:
        """The part of `write_held` that needs `lock`: the signals and marks held are
        delivered, and every changed state is taken as it is now, to be written to the table
        a slice at a time without the lock (`_write_taken`, already started). Returns the
        rest, which needs no lock (`end_batch`: wait for those writes and their
        acknowledgement, then end the partitions written). An offset commit runs it after
        letting the agents go on."""
        return await self._start_write(wall_ms())

    async def _write(self, now: int) -> None:
        finish = await self._start_write(now)
        await finish()

    async def _start_write(self, now: int) -> Callable[[], Awaitable[None]]:
        if self.signal_outbox is not None:
            await self.signal_outbox.flush()
        if self.writing is not None and not self.writing.done():
            # The write before this one is still putting its states in the table: its
            # values are older than ours (no broker round trip is waited for here).
            await asyncio.wait([self.writing])
        taken: list[TakenStates] = []
        for partition, event in self.unwritten.items():
            loaded = self.processors.get(partition)
            if loaded is None:
                continue
            store = self.stores[partition]
            changes = store.take()
            # The states taken were decided under this watermark (what was late, what was
            # forgotten): it is written with them, or a restart would judge replayed records
            # against an older one and decide differently. After them, in their changelog
            # partition, it closes them (`commit_table`): they are never restored without
            # it, nor it without them.
            if (
                changes
                or partition in self.progress_due
                or loaded.watermark != self.saved.get(partition)
            ):
                progress = self._progress_record(partition, loaded, now)
                taken.append(TakenStates(partition, event, store, changes, progress))
        self.unwritten.clear()
        self.progress_due.clear()
        # Encoding and handing the states to the table is most of a commit's work under
        # load (hundreds of states): done in slices, between which the agents go on.
        writing = asyncio.ensure_future(self._write_taken(taken))
        self.writing = writing

        async def finish() -> None:
            await end_batch(self.states, await writing, self.flush_producer)

        return finish

    async def _write_taken(self, taken: list[TakenStates]) -> list[tuple[int, Any]]:
        """Write what `_start_write` took, a slice at a time, each partition's states then
        its progress, in the event context of one of its records: (partition, record) of
        each partition written, for `end_batch`."""
        written: list[tuple[int, Any]] = []
        for part in taken:
            changes = part.changes
            for start in range(0, len(changes), WRITE_SLICE):
                if start:
                    await asyncio.sleep(0)
                with event_context(part.event):
                    part.store.write(changes[start : start + WRITE_SLICE])
            with event_context(part.event):
                self.states[progress_key(part.partition)] = part.progress
            written.append((part.partition, part.event))
            await asyncio.sleep(0)
        return written

    def _reconfigure(self, partition: int, processor: PartitionProcessor) -> list[Output]:
        retired = processor.reconfigure(self.engine)
        log.info(
            "partition %d now runs the reloaded journeys: %d open instances retired",
            partition,
            len(retired),
        )
        return retired

    def _mark(self, partition: int, processor: PartitionProcessor, now: int) -> None:
        """Tell the entity stage how far this partition's signals are complete: everything up
        to the watermark has been applied, and its signals are in the outbox before it."""
        if self.signal_outbox is None:
            return
        watermark = processor.watermark
        if watermark is None and processor.max_ts is None:
            # A partition that has never seen an event must not hold every entity back
            # forever: once idle for the idle timeout it vouches for the wall clock.
            idle = self.settings.idle_timeout_ms
            started = processor.started_at or now
            watermark = now - idle if now - started >= idle else None
        if watermark is None or watermark <= self.marked.get(partition, watermark - 1):
            return
        self.signal_outbox.add_mark(ENTITY_LEVEL, partition, watermark)
        self.marked[partition] = watermark

    def _on_record(
        self,
        processor: PartitionProcessor,
        kind: str,
        message: Any,
        now: int,
        backlog: Backlog,
        letters: list[dict[str, Any]],
    ) -> list[Output]:
        """One input record: its event, or each event of a batch record in order (a rejected
        one dead-lettered alone, with its index; the others processed as if sent alone)."""
        raw: bytes | None = message.value
        try:
            decoded = decode_message(
                raw,
                headers=message.headers,
                topic_kind=kind,
                key=message.key,
                topic=message.topic,
                limits=self.batch_limits,
            )
        except RecordRejected as rejection:
            letters.append(self._dead_letter(raw or b"", rejection, message))
            return []
        except Exception as exc:  # a bug must cost one record, not the stream
            letters.append(self._failed(exc, message, raw or b""))
            return []
        if not isinstance(decoded, Batch):
            return self._process(processor, decoded, message, now, backlog, letters)
        self.batched_events += len(decoded.items)
        outputs: list[Output] = []
        for index, item in decoded.items:
            if isinstance(item, RecordRejected):
                letters.append(self._dead_letter(decoded.raw_of(index), item, message, index))
            else:
                outputs.extend(
                    self._process(processor, item, message, now, backlog, letters, decoded, index)
                )
        return outputs

    def _process(
        self,
        processor: PartitionProcessor,
        event: Event,
        message: Any,
        now: int,
        backlog: Backlog,
        letters: list[dict[str, Any]],
        batch: Batch | None = None,
        index: int | None = None,
    ) -> list[Output]:
        """One decoded event (of a batch record: the one at `index`) through the processor."""
        try:
            result = processor.process(event, message.topic, now, backlog)
        except RecordRejected as rejection:
            raw = _raw_of(message, batch, index)
            letters.append(self._dead_letter(raw, rejection, message, index))
            return []
        except Exception as exc:  # a bug must cost one event, not the stream
            letters.append(self._failed(exc, message, _raw_of(message, batch, index), index))
            return []
        self.metrics.count_event(event, result.verdict)
        return result.outputs

    def _failed(
        self, exc: Exception, message: Any, raw: bytes, index: int | None = None
    ) -> dict[str, Any]:
        """The dead letter of a record (or of the event at `index` of a batch record) whose
        handling raised: logged with where it failed, and whose record (hashed), never the
        error's text: that may quote the record, user id included."""
        log.error(
            "record %s/%d@%d%s of user %s failed; dead-lettered\n%s",
            message.topic,
            message.partition,
            message.offset,
            f" (event {index} of the batch)" if index is not None else "",
            user_ref(message.key.decode(errors="replace"), self.user_key)
            if message.key
            else "(no key)",
            traceback_without_text(exc),
        )
        failure = RecordRejected(
            RejectReason.PROCESSING_ERROR, f"{type(exc).__name__} while processing the record"
        )
        return self._dead_letter(raw, failure, message, index)

    def _check_gap(self, message: Any, partition: int) -> None:
        """Count (and log) input records this worker was never handed: an offset past the next
        one expected. Nothing here can fetch them again; the count tells that it happened.
        Ticks are not checked: they carry nothing to lose, and a new owner has been seen to
        begin after some (27, sent by the old owner during a rebalance; cause not found)."""
        previous = self.offsets.get((message.topic, partition))
        committed = None
        if previous is None and self.committed is not None:
            committed = self.committed(message.tp)
        skipped = skipped_offsets(message.offset, previous, committed)
        if skipped:
            self.metrics.input_gaps.inc(skipped)
            log.warning(
                "%s/%d: %d records before offset %d never reached this worker",
                message.topic,
                partition,
                skipped,
                message.offset,
            )

    def _backlog_of(
        self, partition: int, any_tp: Any, processor: PartitionProcessor, now: int
    ) -> Backlog:
        """A topic has backlog on this partition when records beyond the last one handled
        exist (its highwater is ahead): such a topic is busy, never idle. Before this worker
        has handled a record of it, the group's committed offset says where handling stands;
        without that, a topic read to its end before a restart would look busy for ever and
        hold the partition's watermark (and its deadlines) back. A highwater not known yet
        (the consumer has not fetched that partition since it was assigned) counts as
        busy for `unknown_lag_grace_ms` after the partition was loaded: a restarted worker
        slow to fetch one of its partitions took it for idle, moved its watermark to the
        clock, and every record waiting there was late.

        A batch asks once per topic and partition, not once per record and silent topic (that
        was 4% of a worker's CPU): within a batch the handled offsets only move forward, so a
        kept answer can only say "busy" of a topic read to its end since, which holds the
        watermark back until the next batch and never lets it outrun a record; and a
        highwater moves only when the consumer fetches."""
        known: dict[str, bool] = {}

        def backlog(topic: str) -> bool:
            answer = known.get(topic)
            if answer is None:
                answer = known[topic] = waiting(topic)
            return answer

        def waiting(topic: str) -> bool:
            if self.highwater is None:
                return False
            tp = any_tp._replace(topic=topic)
            try:
                high = self.highwater(tp)
            except Exception:  # not assigned (yet): nothing known to be waiting
                return False
            if high is None:
                loaded = processor.started_at if processor.started_at is not None else now
                return now - loaded < self.unknown_lag_grace_ms
            handled = self.offsets.get((topic, partition))
            if handled is None:
                committed = self.committed(tp) if self.committed is not None else None
                # Faust records "never committed" as -1.
                handled = committed - 1 if committed is not None and committed > 0 else -1
            return bool(high > handled + 1)

        return backlog

    def _dead_letter(
        self, raw: bytes, rejection: RecordRejected, message: Any, index: int | None = None
    ) -> dict[str, Any]:
        """The dead letter of a rejected record (or of the event at `index` of a batch record),
        as a message for the dead-letter topic."""
        self.metrics.count_rejected(rejection.reason)
        source = KafkaSource(
            topic=message.topic, partition=message.partition, offset=message.offset, index=index
        )
        letter = DeadLetter.from_rejection(raw, rejection, source)
        value = orjson.dumps(letter.model_dump(mode="json"))
        return {"key": message.key, "value": value, "force": True}

    async def _publish(self, outputs: list[Output], now: int) -> None:
        messages = []
        for out in outputs:
            if isinstance(out, Trigger | Resolution):
                if isinstance(out, Trigger) and out.type == "dropoff" and out.deadline:
                    self._observe_delay(out, now)
                messages.append(
                    {
                        "key": out.user_id.encode(),
                        "value": orjson.dumps(out.model_dump(mode="json")),
                        "force": True,
                    }
                )
        # Delivered before the state that produced them is written (see module doc).
        await deliver_all(self.triggers_topic.send, messages)
        self.on_published(outputs)

    def _observe_delay(self, trigger: Trigger, now: int) -> None:
        delay = (now - parse_ts(str(trigger.deadline))) / 1000
        if 0 <= delay < 3600:  # real-time traffic only; replays of old data are not latency
            self.metrics.deadline_delay.observe(delay)

    def _progress_record(self, partition: int, processor: PartitionProcessor, now: int) -> bytes:
        """The partition's progress as of now, to be written after its states."""
        self.saved[partition] = processor.watermark
        if processor.watermark is not None:
            self.metrics.watermark_lag.labels(str(partition)).set(
                (now - processor.watermark) / 1000
            )
        return orjson.dumps(
            {
                "watermark": processor.watermark,
                "sources": {
                    name: clock.max_ts
                    for name, clock in processor.sources.items()
                    if clock.max_ts is not None
                },
                "journeys": dump_shapes(
                    self.shapes
                    if processor.engine is self.engine
                    else shapes_of(processor.engine.journeys)  # a reload came mid-record
                ),
                CLOSES_COMMIT: True,
            }
        )


class TakenStates(NamedTuple):
    """One partition's changed states taken to be written, and its progress after them."""

    partition: int
    event: Any  # one of its records: the event context of the writes
    store: UserStore
    changes: Changes[UserState]
    progress: bytes


@dataclass
class LinkWatchApp:
    app: faust.App
    live: LiveJourneys
    registry: CollectorRegistry
    settings: Settings
    entities: LiveEntities | None = None

    def ready(self) -> bool:
        """Partitions assigned, tables recovered, not in the middle of a rebalance."""
        app = self.app
        if app.rebalancing or app.in_recovery:
            return False
        try:
            assigned = app.consumer.assignment()
        except Exception:  # the consumer is not started yet
            return False
        recovery = cast(Any, app.tables).recovery
        return bool(assigned) and bool(recovery.completed.is_set())

    def assigned_partitions(self) -> set[int]:
        try:
            assignment = self.app.consumer.assignment()
        except Exception:  # the consumer is not started yet
            return set()
        return {tp.partition for tp in assignment if tp.topic == self.settings.topic_ticks}


def oversized_counter(metrics: Metrics) -> Callable[[str, int], None]:
    """Reports a state value too big for the changelog: counted, and logged by kind."""

    def oversized(kind: str, size: int) -> None:
        metrics.state_oversized.labels(kind).inc()
        log_oversized(kind, size)

    return oversized


class Writer(Protocol):
    """An agent's adapter whose changed states wait for the next offset commit."""

    lock: asyncio.Lock
    write_on_commit: bool

    async def write_pending(self) -> None: ...
    async def start_write(self) -> Callable[[], Awaitable[None]]: ...


def write_before_commits(
    consumer: Any,
    writers: Sequence[Writer],
    on_pause: Callable[[float], None] = lambda _: None,
) -> None:
    """Make each of the consumer's offset commits write the changed states first, and each
    writer write them only then (`write_on_commit`): a user's state is written once per
    commit interval, however many of their events arrived, instead of once per batch.

    Faust commits the offsets of acked records from a timer, on a rebalance and on stop, all
    through `force_commit`; wrapped here, it takes every writer's lock (an agent holds its
    own while it handles a batch; Faust acks a batch's records only after that), takes the
    changed states (`start_write`), and keeps the locks until Faust has chosen the offsets to
    commit (seen through `_filter_committable_offsets`). So every record acked by then
    belongs to a batch that had ended, with its outputs delivered, and its states are among
    those taken. The agents go on from there: the rest of the write (the states into the
    tables a slice at a time, waiting for the broker to acknowledge them, ending the
    changelog partitions written) runs while they work, and Faust sends nothing attached to
    the offsets and commits none of them before it is done (`_handle_attached`, the first
    step of Faust's commit after choosing, waits for it).
    Holding the locks through those round trips paused every agent for hundreds of
    milliseconds per commit under load (bench/service.py latency). `on_pause` is told how
    long each commit held the agents, in seconds.

    Commits may overlap (one from the timer waiting for the broker, one from a rebalance):
    each waits for its own writes, and for all written before them, since a flush waits for
    everything sent before it. They must not wait for each other: the rebalance waits for its
    commit, and the other commit's offsets wait for the rebalance."""
    if getattr(consumer, "_linkwatch_writes_first", False):
        return
    commit = consumer.force_commit
    choose = consumer._filter_committable_offsets
    attach = consumer._handle_attached
    waiting: list[asyncio.Event] = []  # one per commit waiting for its offsets to be chosen

    def filter_committable_offsets(tps: Any) -> Any:
        offsets = choose(tps)
        for chosen in waiting:
            chosen.set()
        return offsets

    async def handle_attached(*args: Any, **kwargs: Any) -> Any:
        finishing = _commit_writes.get()
        if finishing is not None:  # this commit's writes, acknowledged before any offset goes
            await asyncio.shield(finishing)
        return await attach(*args, **kwargs)

    async def force_commit(*args: Any, **kwargs: Any) -> Any:
        async with contextlib.AsyncExitStack() as held:
            for writer in writers:
                await held.enter_async_context(writer.lock)
            paused = time.monotonic()
            finishes = [await writer.start_write() for writer in writers]
            finishing = asyncio.ensure_future(_run_in_order(finishes))
            chosen = asyncio.Event()
            waiting.append(chosen)
            # The commit's task sees its own writes (a commit may start while another one
            # waits for the broker: a rebalance's, whose revocation that one's waits for).
            token = _commit_writes.set(finishing)
            try:
                committing = asyncio.ensure_future(commit(*args, **kwargs))
            finally:
                _commit_writes.reset(token)
            chosen_wait = asyncio.ensure_future(chosen.wait())
            try:
                await asyncio.wait({committing, chosen_wait}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                committing.cancel()
                raise
            finally:
                chosen_wait.cancel()
                waiting.remove(chosen)
                on_pause(time.monotonic() - paused)
        did_commit = await committing
        await finishing  # (with nothing to commit, Faust sends nothing attached)
        return did_commit

    consumer._filter_committable_offsets = filter_committable_offsets
    consumer._handle_attached = handle_attached
    consumer.force_commit = force_commit
    consumer._linkwatch_writes_first = True
    for writer in writers:
        writer.write_on_commit = True


# The rest of the running commit's writes (`write_before_commits`), for its `_handle_attached`.
_commit_writes: contextvars.ContextVar[asyncio.Future[None] | None] = contextvars.ContextVar(
    "linkwatch_commit_writes", default=None
)


async def _run_in_order(steps: Sequence[Callable[[], Awaitable[None]]]) -> None:
    for step in steps:
        await step()


def hold_fetches_for(app: faust.App, seconds: float) -> None:
    """Make the worker's consumer let the broker hold a fetch for at most `seconds` while no
    record is there. Faust builds that consumer with `fetch_max_wait_ms=1500` and no setting
    (`AIOKafkaConsumerThread._create_worker_consumer`); aiokafka reads the value when the
    consumer starts, just after, so it is set on the consumer as it is made. Tansu answers a
    held fetch late (bench/service.py: 406 ms median from produce to a consumer waiting with
    1,500 ms, 7 ms with 50 ms), and every record and tick waits for that."""
    app.linkwatch_fetch_max_wait_ms = round(seconds * 1000)  # type: ignore[attr-defined]
    thread = AIOKafkaConsumerThread
    if getattr(thread, "_linkwatch_holds_fetches", False):
        return
    create = thread._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        wait = getattr(self.app, "linkwatch_fetch_max_wait_ms", None)
        if wait is not None:
            consumer._fetch_max_wait_ms = wait
        return consumer

    thread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]
    thread._linkwatch_holds_fetches = True  # type: ignore[attr-defined]


PARTITION_CACHE_SIZE: Final = 65_536  # entities whose signals partition is kept


def signal_partitioner(partitions: int) -> PartitionOf:
    """Where an entity's signals go: where Kafka's default partitioner (murmur2) puts a record
    keyed by the entity, as signals were sent before they were packed, so that a restart
    after an upgrade finds each entity's record where it left it."""
    partitioner = DefaultPartitioner()
    every = list(range(partitions))

    # Cached: aiokafka's murmur2 is pure Python, and most signals go to a few busy entities
    # (links, campaigns), so hashing each signal's entity was 3% of a worker's CPU.
    @functools.lru_cache(maxsize=PARTITION_CACHE_SIZE)
    def partition_of(entity: str) -> int:
        return int(partitioner(entity.encode(), every, None))

    return partition_of


def create_app(settings: Settings, journeys: JourneySet | None = None) -> LinkWatchApp:
    """Build the Faust app with everything injected; nothing global, nothing hard-coded."""
    journeys = journeys or load_journeys(settings.journeys_file)
    if settings.allowed_lateness is not None:
        from dataclasses import replace

        journeys = replace(journeys, allowed_lateness_ms=parse_duration(settings.allowed_lateness))
    app = faust.App(
        settings.app_id,
        broker=settings.faust_broker,
        broker_credentials=_credentials(settings),
        store=settings.store,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.heartbeat_interval,
        broker_request_timeout=settings.broker_request_timeout,
        broker_commit_interval=settings.commit_interval,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_request_timeout=settings.producer_request_timeout,
        producer_linger=settings.producer_linger,
        autodiscover=False,
        table_standby_replicas=0,
        TableManager="linkwatch.stream_resume:InOrderTableManager",
    )
    hold_fetches_for(app, settings.fetch_max_wait)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.holdout_percent = journeys.suppression.holdout_percent
    setup_faust_sensor(app, registry)
    inputs = app.topic(*settings.input_topics.values(), settings.topic_ticks, **RAW)
    ticks = app.topic(settings.topic_ticks, partitions=settings.partitions, **RAW)
    triggers = app.topic(settings.topic_triggers, partitions=settings.partitions, **RAW)
    dlq = app.topic(settings.topic_dlq, partitions=settings.partitions, **RAW)
    states = _commit_table(app, settings, "states", "Per-user journey state", metrics)
    watermarks = _bytes_table(app, settings, "watermarks", "Per-partition progress")
    live = LiveJourneys(settings, journeys, metrics, states, watermarks, triggers, dlq)
    install_lean_buffer(app.producer, max_messages=settings.producer_buffer_max)
    live.flush_producer = flush_sent(app.producer)
    linkwatch = LinkWatchApp(app, live, registry, settings)
    live.assigned = linkwatch.assigned_partitions
    ui = WebUI(registry, lambda: live.journeys)
    live.on_published = ui.on_outputs
    entities = _entity_stage(app, settings, journeys, metrics, watermarks)
    if entities is not None:
        live.signal_outbox = entities.live.outbox
        linkwatch.entities = entities.live
        entities.live.on_published = ui.on_entity_outputs
    # Read at scrape time (in the event loop, like every state change).
    metrics.state_keys.labels("users").set_function(lambda: _held(live.stores))
    metrics.state_cached.labels("users").set_function(lambda: _cached(live.stores))
    metrics.state_reads.labels("users").set_function(lambda: _reads(live.stores))
    if entities is not None:
        entity_stores = entities.live.stores
        metrics.state_keys.labels("entities").set_function(lambda: _held(entity_stores))
        metrics.state_cached.labels("entities").set_function(lambda: _cached(entity_stores))
        metrics.state_reads.labels("entities").set_function(lambda: _reads(entity_stores))
        metrics.entity_held.set_function(lambda: entities.live.held)
        for level in entities.levels:
            metrics.entity_watermark_lag.labels(str(level)).set_function(
                functools.partial(_entity_lag, entities.live.stages, level)
            )

    writers: list[Writer] = [live] if entities is None else [live, entities.live]
    gate = None
    if entities is not None and entities.live.held_max:
        gate = entities.gate = InputGate(
            app.consumer,
            frozenset(settings.input_topics.values()),
            entities.live,
            in_recovery=lambda: bool(app.in_recovery),
            on_paused=metrics.inputs_paused.inc,
        )

    @app.agent(inputs, name="linkwatch.journeys")
    async def journeys_agent(stream: faust.StreamT[bytes]) -> None:
        write_before_commits(app.consumer, writers, metrics.commit_pause.observe)
        live.highwater = app.consumer.highwater
        # Faust's record of committed offsets (filled when it seeks to them on assignment).
        committed = getattr(app.consumer, "_committed_offset", None)
        live.committed = committed.get if committed is not None else None
        # Faust acks a batch's records once this body is done with them: state is written
        # before any of their offsets can be committed.
        batches = cast(faust.Stream[bytes], stream).take_events  # a Stream; its type omits it
        async for batch in batches(settings.batch_max, settings.batch_within):
            await live.on_batch(batch)
            if gate is not None:
                await check_gate(gate)

    pacer = TickPacer(resend_after_ms=TICK_RESEND_AFTER_MS)
    live.on_tick_read = pacer.read

    async def send_ticks() -> None:
        for partition in pacer.due(linkwatch.assigned_partitions(), wall_ms()):
            sent = cast(asyncio.Future[Any], await ticks.send(value=b"", partition=partition))
            sent.add_done_callback(functools.partial(_tick_sent, pacer, partition))

    app.timer(interval=settings.tick_interval_s)(send_ticks)

    watchdog = RecoveryWatchdog(app, settings.recovery_stall_timeout, metrics.recovery_reseeks.inc)
    app.timer(interval=min(5.0, settings.recovery_stall_timeout / 2))(watchdog.check)

    if settings.journeys_file is not None and settings.reload_interval > 0:
        watcher = JourneysWatcher(settings.journeys_file, journeys, live.reload, registry)

        async def watch_journeys() -> None:
            watcher.poll()

        app.timer(interval=settings.reload_interval)(watch_journeys)

    async def on_revoked(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", set())
        for writer in writers:  # (Faust's commit before this has written them, normally)
            await writer.write_pending()
        tick_partitions = {tp.partition for tp in revoked if tp.topic == settings.topic_ticks}
        live.forget(tick_partitions)
        pacer.forget(tick_partitions)
        if entities is not None:
            entities.live.forget(
                {tp.partition for tp in revoked if tp.topic == settings.topic_signals}
            )

    stop_tables = app.tables.stop

    async def write_then_stop_tables() -> None:
        """Stopping, Faust closes the tables (their RocksDB databases) before its consumer's
        last commit, whose writes of the states changed since the one before then failed
        ("lock hold by current process", the worker's exit a crash; their records replayed
        at the next start). Its streams are empty by now: commit here, while the tables are
        open, then let every partition go, so that nothing is left to write later."""
        try:
            commit = cast(Any, app.consumer).force_commit  # (ours: `write_before_commits`)
            await asyncio.wait_for(commit(), settings.shutdown_timeout)
        except Exception:
            log.exception("the last commit before the tables close failed; replayed at start")
        async with live.lock:
            live.forget(set(live.processors))
        if entities is not None:
            async with entities.live.lock:
                entities.live.forget(set(entities.live.stages))
        await stop_tables()

    app.tables.stop = write_then_stop_tables  # type: ignore[method-assign]

    async def on_rebalanced(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        metrics.partitions.set(len(linkwatch.assigned_partitions()))

    # Faust types a signal receiver as a union of callables mypy cannot match; the shape is right.
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_rebalance_complete.connect(on_rebalanced)  # type: ignore[arg-type]

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ready = linkwatch.ready()
        return web.json({"ready": ready}, status=200 if ready else 503)

    # The live funnel page (webui.py): static files from the package, and the JSON it polls.
    for path, name in (
        ("/ui", "index.html"),
        ("/ui/app.js", "app.js"),
        ("/ui/style.css", "style.css"),
    ):
        app.page(path)(_static_page(name))

    @app.page("/ui/data.json")
    async def ui_data(web: Any, request: Any) -> Any:
        return web.bytes(ui.data(), headers=DATA_HEADERS)

    return linkwatch


def _static_page(name: str) -> Callable[[Any, Any], Awaitable[Any]]:
    """A web view serving one of the package's ui/ files."""

    async def static_page(web: Any, request: Any) -> Any:
        body, headers = asset(name)
        return web.bytes(body, headers=headers)

    static_page.__name__ = f"ui_{name.replace('.', '_')}"  # Faust names the view after it
    return static_page


@dataclass
class _EntityWiring:
    live: LiveEntities
    signals_topic: Any
    levels: list[int]
    gate: InputGate | None = None  # bounded in memory: see `backpressure`


def _entity_stage(
    app: faust.App,
    settings: Settings,
    journeys: JourneySet,
    metrics: Metrics,
    progress: Any,
) -> _EntityWiring | None:
    """The entity stage's topic, table and agent, when any entity logic is enabled."""
    logics, levels = entity_logics(journeys)  # built once, shared by every partition's stage
    if not logics:
        return None
    signals = app.topic(settings.topic_signals, partitions=settings.partitions, **RAW)
    health = app.topic(settings.topic_health, partitions=settings.partitions, **RAW)
    profiles = app.topic(settings.topic_profiles, partitions=settings.partitions, **RAW)
    records = _commit_table(
        app,
        settings,
        "entities",
        "Per-entity aggregates: links, campaigns, groups, shares, sharers",
        metrics,
    )

    def new_stage(store: Any, wakeups: Any = None) -> EntityStage:
        return EntityStage(logics, store, levels, wakeups)

    def offered(verdict: Offered) -> None:
        if verdict is not Offered.ACCEPTED:
            metrics.signals_refused.labels(verdict.value).inc()

    live = LiveEntities(
        new_stage=new_stage,
        partitions=settings.partitions,
        records=records,
        progress=progress,
        send_signal=signals.send,
        send_health=health.send,
        send_profile=profiles.send,
        on_measures=metrics.count_measures,
        partition_of=signal_partitioner(settings.partitions),
        on_offered=offered,
    )
    if settings.state_cache_max and settings.on_rocksdb:
        # As the users' stores (`LiveJourneys._stores_of`): a tier record per user adds up.
        live.bounded = BoundedMemory(
            partition_db=functools.partial(partition_db, records),
            cache_max=settings.state_cache_max,
            wakeups_dir=settings.data_dir / "wakeups" / f"{settings.app_id}-entities",
            fire_chunk=settings.fire_chunk,
            held_max=settings.entity_held_max,
        )

    live.on_oversized = oversized_counter(metrics)
    live.flush_producer = flush_sent(app.producer)

    @app.agent(signals, name="linkwatch.entities")
    async def entities_agent(stream: faust.StreamT[bytes]) -> None:
        # Acked by Faust once handled: every record they changed is written first.
        batches = cast(faust.Stream[bytes], stream).take_events  # a Stream; its type omits it
        async for batch in batches(settings.batch_max, settings.batch_within):
            await live.on_batch(batch)
            if wiring.gate is not None:
                await check_gate(wiring.gate)  # inputs back as soon as this lets records go

    wiring = _EntityWiring(live, signals, levels)
    return wiring


async def check_gate(gate: InputGate) -> None:
    """An agent that raises is restarted by Faust, and the records it had buffered are lost
    to it (`_check_gap` logs them): the gate must cost at most its bound, never that."""
    try:
        await gate.check()
    except Exception:
        log.exception("the input gate failed")


def _tick_sent(pacer: TickPacer, partition: int, sent: asyncio.Future[Any]) -> None:
    if sent.cancelled() or sent.exception() is not None:
        pacer.failed(partition)


def _held(stores: dict[int, Any]) -> int:
    return sum(len(store) for store in stores.values())


def _cached(stores: dict[int, Any]) -> int:
    return sum(store.cached for store in stores.values())


def _entity_lag(stages: dict[int, EntityStage], level: int) -> float:
    marks = [stage.watermarks.get(level) for stage in stages.values()]
    known = [mark for mark in marks if mark is not None]
    return time.time() - min(known) / 1000 if known else math.nan


def _reads(stores: dict[int, Any]) -> int:
    return sum(store.reads for store in stores.values())


def _bytes_table(app: faust.App, settings: Settings, name: str, help: str) -> Any:
    """A table of raw bytes (bytes key and value types make Faust use the raw codec for its
    changelog); we encode the values ourselves."""
    return app.Table(name, help=help, **_bytes_options(settings))


def _commit_table(
    app: faust.App, settings: Settings, name: str, help: str, metrics: Metrics
) -> CommitTable:
    """A table of raw bytes written in whole commits (`CommitTable`): states and their
    progress. The unfinished commits its recoveries drop are counted."""
    table = CommitTable(
        app, name=name, beacon=app.tables.beacon, help=help, **_bytes_options(settings)
    )
    table.on_unfinished = functools.partial(metrics.count_unfinished_commit, name)
    return cast(CommitTable, app.tables.add(table))


def _bytes_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "partitions": settings.partitions,
        "key_type": bytes,
        "value_type": bytes,
    }
    if settings.on_rocksdb:
        # Faust's defaults (a 2 GiB read cache and 3 x 64 MiB write buffers per partition's
        # database) would let memory grow far past what the states held decoded take.
        options["options"] = {
            "block_cache_size": settings.rocksdb_block_cache_mb << 20,
            "write_buffer_size": settings.rocksdb_write_buffer_mb << 20,
            "max_write_buffer_number": 3,
        }
    return options


def _credentials(settings: Settings) -> Any:
    context = settings.ssl_context()
    if settings.sasl_mechanism:
        return faust.SASLCredentials(
            username=settings.sasl_username or "",
            password=settings.sasl_password.get_secret_value() if settings.sasl_password else "",
            mechanism=settings.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
