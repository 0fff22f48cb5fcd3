"""Producing LinkWatch records to Kafka: each kind to its input topic, keyed by `user_id`;
optionally several events of one user a record (NDJSON batch records, see `Batcher`)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import suppress
from typing import Any, Final, NamedTuple

import orjson
from aiokafka import AIOKafkaProducer

from linkwatch.codec import decode_event
from linkwatch.errors import RecordRejected
from linkwatch.events import MAX_RECORD_BYTES
from linkwatch.settings import Settings
from linkwatch.simulate import generate

MIN_SLEEP: Final = 0.005  # below this the pacer lets records run ahead rather than sleep
MAX_CATCH_UP: Final = 1.0  # after a stall, at most this many seconds' worth go out in a burst
NDJSON_HEADERS: Final = (("content-type", b"application/x-ndjson"),)


def route(record: bytes, settings: Settings) -> tuple[str, bytes | None]:
    """Topic and key of a raw record. A record that names no known kind (invalid JSON or UTF-8,
    unknown kind, not an object) still goes out, to the click topic without a key, so the
    worker sees it and dead-letters it."""
    try:
        data = orjson.loads(record)
    except orjson.JSONDecodeError:
        return settings.topic_click, None
    return _route_of(data, settings)


def _route_of(data: Any, settings: Settings) -> tuple[str, bytes | None]:
    """`route` of a record already parsed."""
    topics = settings.input_topics
    if isinstance(data, dict):
        kind = data.get("kind")
        if isinstance(kind, str) and kind in topics:
            user_id = data.get("user_id")
            # orjson refuses lone surrogates, so every str it returns encodes.
            return topics[kind], user_id.encode() if isinstance(user_id, str) else None
    return settings.topic_click, None


class Outgoing(NamedTuple):
    """One Kafka record to send: a record as given, or a batch record of `events` of them."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    events: int


class Batcher:
    """Groups consecutive records of one user on one topic into NDJSON batch records of at
    most `max_events` events and `max_bytes` bytes (content-type application/x-ndjson).

    The order of the records on every topic partition stays exactly as given: a record joins
    the batch being built only if it has the same topic and key, and a batch is sent before
    any record that follows it. So the worker sees the same events in the same order, and
    decides the same. A record that could not share a batch goes alone, as without batching:
    one without a key (`route` could not tell its user), one holding a line break (JSON laid
    out over several lines) and one over `MAX_RECORD_BYTES` (rejected alone, as before). A
    batch of one is sent as the record itself, with no header."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        if max_events < 1:
            raise ValueError(f"a batch holds at least one event, not {max_events}")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._route: tuple[str, bytes] | None = None  # topic and key of the batch being built
        self._records: list[bytes] = []
        self._size = 0  # of the batch being built, newlines included

    def add(self, topic: str, key: bytes | None, record: bytes) -> list[Outgoing]:
        """What to send now that `record` comes next (possibly nothing yet)."""
        if key is None or b"\n" in record or len(record) > MAX_RECORD_BYTES:
            return [*self.flush(), Outgoing(topic, key, record, (), 1)]
        out: list[Outgoing] = []
        joined = self._size + 1 + len(record)  # a newline before it
        if self._route == (topic, key) and joined <= self.max_bytes:
            self._records.append(record)
            self._size = joined
        else:
            out = self.flush()
            self._route, self._records, self._size = (topic, key), [record], len(record)
        if len(self._records) >= self.max_events:
            out += self.flush()
        return out

    def flush(self) -> list[Outgoing]:
        """The batch being built, if any, to send now."""
        if self._route is None:
            return []
        (topic, key), records = self._route, self._records
        self._route, self._records, self._size = None, [], 0
        if len(records) == 1:
            return [Outgoing(topic, key, records[0], (), 1)]
        return [Outgoing(topic, key, b"\n".join(records), NDJSON_HEADERS, len(records))]


def sdk_flush_order(
    records: Iterable[bytes],
    settings: Settings,
    max_events: int,
    flush_after_ms: int,
) -> Iterator[bytes]:
    """`records` (in event-time order) in the order SDKs that buffer each user's events would
    send them: a user's events of one kind go out together, in their order, once `max_events`
    of them wait or once the event time has moved more than `flush_after_ms` past the first of
    them; at the end, whatever still waits. `Batcher` then makes each flush one batch record.

    Interleaved users send no two consecutive records of one user, so batching them as given
    batches nothing. Reordered like this, no event goes out more than `flush_after_ms` of event
    time behind the newest one sent before it: an allowed lateness above that keeps every event
    on time. A record without a user or a time goes out where it is."""
    if max_events < 1 or flush_after_ms < 0:
        raise ValueError("max_events must be >= 1 and flush_after_ms >= 0")
    waiting: dict[tuple[str, bytes], tuple[int, list[bytes]]] = {}  # route → (first ts, records)
    opened: deque[tuple[int, tuple[str, bytes]]] = deque()  # (first ts, route), oldest first
    latest: int | None = None
    for record in records:
        try:
            data = orjson.loads(record)
        except orjson.JSONDecodeError:
            yield record
            continue
        topic, key = _route_of(data, settings)
        ts = data.get("ts") if key is not None else None  # a key: `data` is a dict
        if key is None or not isinstance(ts, int) or isinstance(ts, bool):
            yield record
            continue
        latest = ts if latest is None else max(latest, ts)
        while opened and opened[0][0] + flush_after_ms < latest:
            first, due = opened.popleft()
            entry = waiting.get(due)
            if entry is not None and entry[0] == first:  # not flushed (full) since
                yield from waiting.pop(due)[1]
        entry = waiting.get((topic, key))
        if entry is None:
            entry = waiting[topic, key] = (ts, [])
            opened.append((ts, (topic, key)))
        entry[1].append(record)
        if len(entry[1]) >= max_events:
            yield from waiting.pop((topic, key))[1]
    for _, due in opened:
        entry = waiting.pop(due, None)
        if entry is not None:
            yield from entry[1]


class Pacer:
    """Holds a stream to `rate` records/s on a schedule against a monotonic clock. It sleeps only
    when ahead by MIN_SLEEP or more, so fast rates cost one sleep per burst, not per record, and
    sleep overshoot is made up instead of accumulating."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, not {rate}")
        self.interval = 1 / rate
        self._clock = clock
        self._sleep = sleep
        self._due: float | None = None  # when the next record may go

    async def wait(self) -> None:
        """Return when the next record may be sent."""
        now = self._clock()
        due = now if self._due is None else max(self._due, now - MAX_CATCH_UP)
        if due - now >= MIN_SLEEP:
            await self._sleep(due - now)
        self._due = due + self.interval


async def produce(
    settings: Settings,
    records: Iterable[bytes] | AsyncIterable[bytes],
    *,
    rate: float | None = None,
    on_sent: Callable[[int], None] | None = None,
    batch: int = 1,
    linger_ms: int = 5,
) -> int:
    """Send every record (see `route`), at `rate` records/s when given, else as fast as
    possible; return once all are acknowledged, with their count. `on_sent` is told the running
    count after each record is handed to the producer. A delivery failure raises.

    With `batch` > 1, consecutive records of one user on one topic go out together, up to
    `batch` a Kafka record and `settings.batch_record_max_bytes` (see `Batcher`); `rate` and
    the counts are still of the records given. A record may then wait for the next one (at
    most `batch` records at `rate`) to see whether it joins its batch.

    `linger_ms` is how long the producer waits to fill a Kafka batch (of records, whatever
    `batch` is): longer means fewer, larger produce requests."""
    pacer = Pacer(rate) if rate is not None else None
    batcher = Batcher(batch, settings.batch_record_max_bytes)
    producer = AIOKafkaProducer(
        **settings.aiokafka_options(),
        client_id=f"{settings.app_id}-producer",
        acks="all",
        linger_ms=linger_ms,
        enable_idempotence=False,
        # aiokafka's default (1 MiB) refuses a larger record; the broker may allow one.
        max_request_size=max(1024 * 1024, settings.batch_record_max_bytes + 64 * 1024),
    )
    await producer.start()
    try:
        pending: deque[asyncio.Future[Any]] = deque()
        count = 0

        async def send(outgoing: list[Outgoing]) -> None:
            nonlocal count
            for out in outgoing:
                headers = list(out.headers) or None
                sent = await producer.send(out.topic, out.value, key=out.key, headers=headers)
                pending.append(sent)
                count += out.events
                if on_sent is not None:
                    on_sent(count)

        async for record in _each(records):
            if pacer is not None:
                await pacer.wait()
            await send(batcher.add(*route(record, settings), record))
            # Check deliveries as they land, so a failure surfaces early and memory stays flat.
            while pending and pending[0].done():
                pending.popleft().result()
        await send(batcher.flush())
        await producer.flush()
        for delivery in pending:
            await delivery
    finally:
        await producer.stop()
    return count


async def _each(records: Iterable[bytes] | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(records, AsyncIterable):
        async for record in records:
            yield record
    else:
        for record in records:
            yield record


def endless_traffic(
    *,
    seed: int,
    users: int,
    bad_ratio: float,
    start_ms: int | None = None,
    wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> Iterator[bytes]:
    """Simulated populations one after another (seed, seed + 1, ...) for a live demo.

    Each starts at the wall clock, but never before the newest event time of the one before:
    a population covers hours of event time, and starting it behind that would make the whole
    of it late for the worker's watermark. Each population has its own user ids (`u<seed>-`),
    so one population's open journeys are never advanced by the next one's users."""
    start = start_ms if start_ms is not None else wall_clock_ms()
    while True:
        newest = start
        population = generate(
            seed=seed, users=users, start_ms=start, bad_ratio=bad_ratio, user_prefix=f"u{seed}-"
        )
        for record in population:
            with suppress(RecordRejected):  # a deliberately bad record has no event time
                newest = max(newest, decode_event(record).ts)
            yield record
        seed += 1
        start = max(wall_clock_ms(), newest + 1)
