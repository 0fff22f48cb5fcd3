"""Kafka topics: create the missing ones, and read partition counts without creating any."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from linkwatch.errors import ConfigError, LinkWatchError
from linkwatch.settings import Settings

# Kafka's rule (Tansu accepts any name, so check here to fail the same way everywhere).
TOPIC_NAME: Final = re.compile(r"[a-zA-Z0-9._-]{1,249}")
METADATA_WAIT: Final = 10.0  # seconds for a created topic to show up in metadata


class TopicError(LinkWatchError):
    """A topic is missing, or the broker refused to create it."""


async def ensure_topics(
    settings: Settings, names: Iterable[str], partitions: int
) -> dict[str, int]:
    """Create the topics that do not exist yet with `partitions` partitions, and return the
    partition count of every named topic. Existing topics keep theirs, so the caller can refuse
    to start when topics that must be co-partitioned disagree."""
    wanted = list(dict.fromkeys(names))
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, not {partitions}")
    for name in wanted:
        if not TOPIC_NAME.fullmatch(name) or name in {".", ".."}:
            raise ConfigError(
                f"invalid topic name {name!r}: use 1-249 of a-z A-Z 0-9 . _ - (not . or ..)"
            )
    admin = _admin(settings)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, settings.replication_factor) for name in wanted]
        )
        for topic, code, *rest in response.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):
                message = rest[0] if rest and rest[0] else for_code(code).__name__
                raise TopicError(f"cannot create topic {topic!r}: {message} (error {code})")
        # On a real cluster a new topic reaches every broker's metadata a moment later.
        deadline = time.monotonic() + METADATA_WAIT
        while True:
            counts = await _partition_counts(admin)
            missing = [name for name in wanted if name not in counts]
            if not missing:
                return {name: counts[name] for name in wanted}
            if time.monotonic() > deadline:
                raise TopicError(f"topics created but not in the metadata: {', '.join(missing)}")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def partition_counts(settings: Settings, names: Iterable[str]) -> dict[str, int]:
    """Partition count of each named topic that exists (missing ones are left out)."""
    admin = _admin(settings)
    await admin.start()
    try:
        counts = await _partition_counts(admin)
    finally:
        await admin.close()
    return {name: counts[name] for name in dict.fromkeys(names) if name in counts}


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    # Metadata for *all* topics: asking for named ones auto-creates those that are missing
    # (aiokafka sets allow_auto_topic_creation, and Tansu then makes them with 4 partitions).
    topics: list[dict[str, Any]] = await admin.describe_topics()
    return {
        topic["topic"]: len(topic["partitions"])
        for topic in topics
        if topic["error_code"] == 0 and topic["partitions"]
    }


def _admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        **settings.aiokafka_options(),
        client_id=f"{settings.app_id}-admin",
        request_timeout_ms=int(settings.broker_request_timeout * 1000),
    )
