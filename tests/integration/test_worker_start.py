"""The worker refuses to start on input topics that are not co-partitioned."""

from __future__ import annotations

import pytest

from linkwatch.settings import Settings
from linkwatch.topics import ensure_topics
from linkwatch.worker import TopicLayoutError, prepare_topics


async def test_worker_refuses_input_topics_with_different_partition_counts(
    kafka_settings: Settings,
) -> None:
    await ensure_topics(kafka_settings, [kafka_settings.topic_purchase], 2)
    with pytest.raises(TopicLayoutError) as info:
        await prepare_topics(kafka_settings)
    message = str(info.value)
    assert f"{kafka_settings.topic_purchase}=2" in message
    assert f"{kafka_settings.topic_click}=4" in message


async def test_worker_creates_missing_topics_and_adopts_their_partition_count(
    kafka_settings: Settings,
) -> None:
    settings = kafka_settings.model_copy(update={"partitions": 3})
    assert await prepare_topics(settings) == 3
    # A second start finds them all and agrees.
    assert await prepare_topics(settings) == 3
