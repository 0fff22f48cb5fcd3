"""Records are delivered until the broker has them: failed ones are sent again, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from linkwatch.delivery import MAX_BACKOFF, deliver_all


class FlakyTopic:
    """`send` returns a delivery future that fails for the first `failures[value]` tries."""

    def __init__(self, failures: dict[bytes, int]) -> None:
        self.failures = dict(failures)
        self.sent: list[bytes] = []
        self.acknowledged: list[bytes] = []

    async def send(self, *, key: bytes | None, value: bytes, force: bool) -> asyncio.Future[Any]:
        self.sent.append(value)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.failures.get(value, 0) > 0:
            self.failures[value] -= 1
            future.set_exception(KafkaTimeoutError())
        else:
            self.acknowledged.append(value)
            future.set_result(None)
        return future


def messages(*values: bytes) -> list[dict[str, Any]]:
    return [{"key": b"k", "value": v, "force": True} for v in values]


async def test_failed_records_are_sent_again_until_acknowledged() -> None:
    topic = FlakyTopic({b"b": 3, b"c": 1})
    slept: list[float] = []
    retried: list[int] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    await deliver_all(topic.send, messages(b"a", b"b", b"c"), on_retry=retried.append, sleep=sleep)
    assert sorted(topic.acknowledged) == [b"a", b"b", b"c"]
    # In order on every round; only the failed ones again, with growing backoff.
    assert topic.sent == [b"a", b"b", b"c", b"b", b"c", b"b", b"b"]
    assert retried == [2, 1, 1]
    assert slept == sorted(slept)
    assert slept[0] < slept[-1] <= MAX_BACKOFF


async def test_a_send_that_raises_is_retried_too() -> None:
    calls = []

    async def send(**message: Any) -> asyncio.Future[Any]:
        calls.append(message["value"])
        if len(calls) == 1:
            raise KafkaTimeoutError()  # e.g. the producer has no metadata for the topic yet
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def sleep(seconds: float) -> None:
        return None

    await deliver_all(send, messages(b"x"), sleep=sleep)
    assert calls == [b"x", b"x"]


async def test_cancellation_is_not_swallowed() -> None:
    async def send(**message: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()  # never acknowledged

    task = asyncio.ensure_future(deliver_all(send, messages(b"x")))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nothing_to_send_returns_at_once() -> None:
    topic = FlakyTopic({})
    await deliver_all(topic.send, [])
    assert topic.sent == []
