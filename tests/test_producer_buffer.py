"""The lean send buffer keeps the order and the flush contract of Faust's own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.producer import ProducerBuffer

from linkwatch.producer_buffer import LeanProducerBuffer, flush_sent, install_lean_buffer
from linkwatch.service import create_app
from linkwatch.settings import Settings


class Channel:
    """Where the buffer's sending task publishes: records the messages, in order; each send
    yields to the loop (as a real send does), and `gate`, when cleared, stalls them (or only
    those numbered from `stall_from` on)."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.stall_from: int | None = None

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        if self.stall_from is None or fut.number >= self.stall_from:
            await self.gate.wait()
        await asyncio.sleep(0)
        self.sent.append(fut.number)


def pending(channel: Channel, number: int) -> Any:
    return SimpleNamespace(number=number, message=SimpleNamespace(channel=channel))


async def started(kind: type[ProducerBuffer]) -> ProducerBuffer:
    buffer = kind()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    await buffer.start()
    return buffer


@contextlib.asynccontextmanager
async def running(kind: type[ProducerBuffer]) -> AsyncIterator[ProducerBuffer]:
    """A started buffer, stopped afterwards whatever the test did."""
    buffer = await started(kind)
    try:
        yield buffer
    finally:
        await buffer.stop()


@pytest.mark.parametrize("kind", [ProducerBuffer, LeanProducerBuffer])
async def test_a_flush_returns_once_everything_was_sent_in_order(
    kind: type[ProducerBuffer],
) -> None:
    channel = Channel()
    async with running(kind) as buffer:
        for number in range(500):
            buffer.put(pending(channel, number))
        assert buffer.size > 0
        await buffer.flush()
        assert buffer.size == 0
        assert channel.sent == list(range(500))


async def test_flush_atmost_returns_the_number_sent_once_it_reaches_it() -> None:
    channel = Channel()
    async with running(LeanProducerBuffer) as buffer:
        for number in range(1000):
            buffer.put(pending(channel, number))
        flushed = await buffer.flush_atmost(100)
        assert 100 <= flushed == len(channel.sent) < 1000
        assert buffer.size <= 1000 - len(channel.sent)
        await buffer.flush()
        assert channel.sent == list(range(1000))


async def test_a_flush_gives_up_when_nothing_is_sent_for_a_while() -> None:
    """Faust's contract: the caller (the worker's full flush) decides whether to go on."""
    channel = Channel()
    async with running(LeanProducerBuffer) as buffer:
        buffer.put(pending(channel, 0))
        await buffer.flush()
        channel.gate.clear()  # the broker stops answering
        for number in range(1, 4):
            buffer.put(pending(channel, number))
        flushed = await asyncio.wait_for(buffer.flush_atmost(None), timeout=10)
        assert flushed == 0
        assert buffer.size == 2  # one taken by the stalled send, two waiting
        channel.gate.set()
        await buffer.flush()
        assert channel.sent == [0, 1, 2, 3]


async def test_a_flush_of_a_stopped_buffer_with_messages_waiting_raises_as_faust_s() -> None:
    channel = Channel()
    buffer = LeanProducerBuffer()
    buffer.put(pending(channel, 0))
    with pytest.raises(RuntimeError, match="not Running"):
        await buffer.flush_atmost(None)


def test_the_worker_s_producer_has_the_lean_buffer(tmp_path: Any) -> None:
    app = create_app(Settings(data_dir=tmp_path)).app
    assert isinstance(app.producer.buffer, LeanProducerBuffer)
    assert app.producer.buffer.app is app


def test_the_worker_s_buffer_holds_as_many_records_as_its_setting(tmp_path: Any) -> None:
    assert create_app(Settings(data_dir=tmp_path)).app.producer.buffer.max_messages == 10_000
    settings = Settings(data_dir=tmp_path, producer_buffer_max=5)
    assert create_app(settings).app.producer.buffer.max_messages == 5


@pytest.mark.parametrize(("bound", "input_waits"), [(10_000, False), (100, True)])
async def test_a_commit_s_writes_stop_the_input_only_beyond_the_bound(
    bound: int, input_waits: bool
) -> None:
    """Faust's conductor waits for `wait_until_ebb` before it hands each input record to a
    stream. 500 writes queued (a commit under load), the producer not taking them yet: with
    Faust's 100 the input stops until they drain; with the worker's bound it goes on."""
    channel = Channel()
    channel.gate.clear()
    async with running(LeanProducerBuffer) as buffer:
        buffer.max_messages = bound
        for number in range(500):
            buffer.put(pending(channel, number))
        ebb = asyncio.create_task(buffer.wait_until_ebb())
        for _ in range(5):
            await asyncio.sleep(0)
        assert ebb.done() is not input_waits
        channel.gate.set()
        await ebb
        await buffer.flush()


def test_a_threaded_producer_keeps_faust_s_buffer() -> None:
    """Its buffer feeds the producer thread's own queue."""
    buffer = object()
    producer = SimpleNamespace(
        app=SimpleNamespace(conf=SimpleNamespace(producer_threaded=True)), buffer=buffer
    )
    install_lean_buffer(producer)
    assert producer.buffer is buffer


class Producer:
    """Faust's producer as the worker's flush sees it: its flush flushes the buffer (then
    would wait for the client's batches, which these fakes do not have: no `_producer`)."""

    def __init__(self, buffer: ProducerBuffer) -> None:
        self.buffer = buffer

    async def flush(self) -> None:
        await self.buffer.flush()


@pytest.mark.parametrize("kind", [ProducerBuffer, LeanProducerBuffer])
async def test_the_full_flush_waits_for_the_message_being_handed_over(
    kind: type[ProducerBuffer],
) -> None:
    """The queue is empty once its last message is taken; that message may still be on its way
    (the producer's own buffer full). A commit after a flush that returned then could lose it.
    (With Faust's buffer the worker's flush repeats Faust's until nothing is queued.)"""
    channel = Channel()
    async with running(kind) as buffer:
        channel.gate.clear()
        buffer.put(pending(channel, 0))
        flush = asyncio.ensure_future(flush_sent(Producer(buffer))())
        await asyncio.sleep(0.5)  # beyond the buffer's 0.1 s give-up: the full flush goes on
        returned_early = flush.done()
        channel.gate.set()
        await asyncio.wait_for(flush, timeout=10)
        assert channel.sent == [0]
        # Faust's buffer reports nothing left while the message is in flight.
        assert returned_early is (kind is ProducerBuffer)


async def test_the_worker_s_flush_waits_for_what_was_sent_before_it_not_after() -> None:
    """A commit waits for its own writes while the agents go on sending: under load the
    buffer may never be empty, and a flush that waited for that would hold the commit."""
    channel = Channel()
    async with running(LeanProducerBuffer) as buffer:
        channel.gate.clear()  # the broker stops answering
        for number in range(3):
            buffer.put(pending(channel, number))
        flush = asyncio.ensure_future(flush_sent(Producer(buffer))())
        await asyncio.sleep(0)  # the flush starts
        for number in range(3, 6):
            buffer.put(pending(channel, number))
        await asyncio.sleep(0.3)
        assert not flush.done()  # 0-2 are not sent yet: the flush waits for them ...
        channel.stall_from = 3  # ... and ends once they are, however long 3-5 take
        channel.gate.set()
        channel.gate = asyncio.Event()
        await asyncio.wait_for(flush, timeout=10)
        assert channel.sent == [0, 1, 2]
        assert buffer.unsent == 3
        channel.gate.set()
        await buffer.flush()


async def test_the_worker_s_flush_repeats_faust_s_until_its_buffer_is_empty() -> None:
    """With Faust's own buffer (a threaded producer), whose flush gives up once it has sent
    nothing for 0.1 s."""

    class FaustProducer:
        def __init__(self) -> None:
            self.buffer = SimpleNamespace(size=5)
            self.flushes = 0

        async def flush(self) -> None:  # sends two, then gives up
            self.flushes += 1
            self.buffer.size = max(0, self.buffer.size - 2)

    producer = FaustProducer()
    await flush_sent(producer)()
    assert producer.buffer.size == 0
    assert producer.flushes == 3


async def test_a_buffer_stops_with_a_record_stuck_in_flight() -> None:
    """Faust stops the buffer by flushing it, then cancelling its sending task: a send that
    never ends must not hold the stop, and the cancelled record counts as handled (no later
    full flush waits for it for ever)."""
    channel = Channel()
    buffer = await started(LeanProducerBuffer)
    channel.gate.clear()
    buffer.put(pending(channel, 0))
    await asyncio.sleep(0.05)  # taken from the queue, stuck in the send
    assert (buffer.size, buffer.unsent) == (0, 1)
    await asyncio.wait_for(buffer.stop(), timeout=10)
    assert buffer.unsent == 0
    assert channel.sent == []
