"""Print a topic's records, for looking at what flows: no consumer group, nothing committed."""

from __future__ import annotations

import time
from typing import IO

from aiokafka import AIOKafkaConsumer, TopicPartition

from linkwatch.settings import Settings
from linkwatch.topics import TopicError, partition_counts

POLL_MS = 1000  # how long one fetch waits when there is no silence timeout to honour


async def tail(
    settings: Settings,
    topic: str,
    *,
    from_beginning: bool = True,
    limit: int | None = None,
    timeout: float | None = None,
    out: IO[str],
) -> int:
    """Print `partition offset key value` per record of every partition of `topic`, until
    `limit` records or `timeout` seconds without one; return how many were printed. Keys and
    values are shown as UTF-8 text on one line (undecodable bytes and line breaks escaped as
    \\xNN, \\n, \\r), a missing key as -."""
    counts = await partition_counts(settings, [topic])
    if topic not in counts:
        raise TopicError(f"no topic {topic!r} on {settings.brokers}")
    partitions = [TopicPartition(topic, number) for number in range(counts[topic])]
    consumer = AIOKafkaConsumer(
        **settings.aiokafka_options(),
        client_id=f"{settings.app_id}-tail",
        group_id=None,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        # Records below these offsets were there before we started, and are not printed.
        ends: dict[TopicPartition, int] | None = None
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
            ends = dict.fromkeys(partitions, 0)
        else:
            await consumer.seek_to_end(*partitions)
        printed = 0
        last = time.monotonic()
        while limit is None or printed < limit:
            wait = POLL_MS / 1000 if timeout is None else timeout - (time.monotonic() - last)
            if wait <= 0:
                break
            batch = await consumer.getmany(
                *partitions,
                timeout_ms=max(1, round(wait * 1000)),
                max_records=None if limit is None else limit - printed,
            )
            if ends is None:
                ends = _high_watermarks(consumer, partitions)
                if ends is None:
                    continue
            for partition, messages in sorted(batch.items()):
                for message in messages:
                    if message.offset < ends[partition]:
                        continue
                    key = "-" if message.key is None else _text(message.key)
                    value = "" if message.value is None else _text(message.value)
                    out.write(f"{partition.partition} {message.offset} {key} {value}\n")
                    printed += 1
                    last = time.monotonic()
            out.flush()
    finally:
        await consumer.stop()
    return printed


def _high_watermarks(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, int] | None:
    """The end of every partition as the fetch responses so far report it, once all have one.

    `seek_to_end` alone is not enough on Tansu: it answers ListOffsets(latest) with the base
    offset of the last batch + 1, so the rest of that batch would be printed as new. The high
    watermark in a fetch response is right there (and the same thing on Kafka)."""
    ends: dict[TopicPartition, int] = {}
    for partition in partitions:
        highwater: int | None = consumer.highwater(partition)
        if highwater is None:
            return None
        ends[partition] = highwater
    return ends


def _text(data: bytes) -> str:
    text = data.decode("utf-8", "backslashreplace")
    return text.replace("\n", "\\n").replace("\r", "\\r")
