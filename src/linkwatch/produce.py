"""Producing LinkWatch records to Kafka: each kind to its input topic, keyed by `user_id`."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import suppress
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaProducer

from linkwatch.codec import decode_event
from linkwatch.errors import RecordRejected
from linkwatch.settings import Settings
from linkwatch.simulate import generate

MIN_SLEEP: Final = 0.005  # below this the pacer lets records run ahead rather than sleep
MAX_CATCH_UP: Final = 1.0  # after a stall, at most this many seconds' worth go out in a burst


def route(record: bytes, settings: Settings) -> tuple[str, bytes | None]:
    """Topic and key of a raw record. A record that names no known kind (invalid JSON or UTF-8,
    unknown kind, not an object) still goes out, to the click topic without a key, so the
    worker sees it and dead-letters it."""
    try:
        data = orjson.loads(record)
    except orjson.JSONDecodeError:
        return settings.topic_click, None
    topics = settings.input_topics
    if isinstance(data, dict):
        kind = data.get("kind")
        if isinstance(kind, str) and kind in topics:
            user_id = data.get("user_id")
            # orjson refuses lone surrogates, so every str it returns encodes.
            return topics[kind], user_id.encode() if isinstance(user_id, str) else None
    return settings.topic_click, None


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
) -> int:
    """Send every record (see `route`), at `rate` records/s when given, else as fast as
    possible; return once all are acknowledged, with their count. `on_sent` is told the running
    count after each record is handed to the producer. A delivery failure raises."""
    pacer = Pacer(rate) if rate is not None else None
    producer = AIOKafkaProducer(
        **settings.aiokafka_options(),
        client_id=f"{settings.app_id}-producer",
        acks="all",
        linger_ms=5,
        enable_idempotence=False,
    )
    await producer.start()
    try:
        pending: deque[asyncio.Future[Any]] = deque()
        count = 0
        async for record in _each(records):
            if pacer is not None:
                await pacer.wait()
            topic, key = route(record, settings)
            pending.append(await producer.send(topic, record, key=key))
            count += 1
            if on_sent is not None:
                on_sent(count)
            # Check deliveries as they land, so a failure surfaces early and memory stays flat.
            while pending and pending[0].done():
                pending.popleft().result()
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
