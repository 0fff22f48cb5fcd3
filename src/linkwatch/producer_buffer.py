"""Faust's producer send buffer, whose flush waits for the message being handed over too.

Table writes go through Faust's `ProducerBuffer`: `table[key] = value` queues a changelog
record, a task hands the queue to the producer one message at a time, and `flush_atmost`
waits until the queue is empty. The queue is empty as soon as the task has taken its last
message, which may still be on its way into the producer (it waits there when the producer's
buffer is full, under load). The worker's flush before an offset commit (Faust's flush,
then the producer's) could then return without it, and a crash right after the commit would
lose that write. Here a flush returns once every message queued has been handed over, and
`flush_sent` waits for those queued before it was called, however many come after.

The rest is Faust's contract: `flush_atmost(n)` returns once at least `n` messages were sent,
none is left, or nothing was sent for 0.1 s (the number it returns is exact; Faust's counts
wake-ups). It also avoids Faust's per-message costs: an `asyncio.wait_for` (a task and a
timer) per message flushed, and a read of the `producer_threaded` setting on every `put` and
`size`. A cProfile of the worker at full load put those at about 6% of its time; measured
without the profiler (`bench/service.py --worker-only`, two runs each) the throughput was the
same within the runs' noise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

from faust.transport.producer import ProducerBuffer
from faust.types import FutureMessage

# Faust's: a flush gives up when nothing has been sent for this long.
IDLE_GIVE_UP_S: Final = 0.1


class LeanProducerBuffer(ProducerBuffer):
    """`ProducerBuffer` for a producer that is not threaded (`producer_threaded` off)."""

    put_total = 0  # messages queued since start
    sent_total = 0  # of them, handed to the producer (or failed to be)

    async def _send_pending(self, fut: FutureMessage) -> None:
        try:
            await super()._send_pending(fut)
        finally:
            self.sent_total += 1

    def put(self, fut: FutureMessage) -> None:
        self.pending.put_nowait(fut)
        self.put_total += 1

    @property
    def size(self) -> int:
        return self.pending.qsize()

    @property
    def unsent(self) -> int:
        """Messages queued or still being handed to the producer."""
        return self.put_total - self.sent_total

    async def wait_handed_over(self, count: int) -> None:
        """Until the first `count` messages queued since start are handed to the producer.
        Unlike a flush, it does not wait for messages queued after them: under load the
        queue may never be empty."""
        while self.sent_total < count:
            await self._next_send()  # (on a timeout: checks the state again, waits again)

    async def flush_atmost(self, max_messages: int | None) -> int:
        start = self.sent_total
        while True:
            flushed = self.sent_total - start
            # Done when none is queued or still being handed over (the queue alone is empty
            # while its last message is in flight).
            if not self.unsent or (max_messages is not None and flushed >= max_messages):
                return flushed
            if not await self._next_send():
                return self.sent_total - start

    async def _next_send(self) -> bool:
        """Wait for the next message handed over: False if none came in `IDLE_GIVE_UP_S`.
        Raises, as Faust's buffer does, when stopped with messages queued (it will not send
        them). Stopping with only a message in flight waits for it like any other; if its task
        is cancelled instead, `_send_pending` counts it all the same."""
        if self.state != "running" and self.size:
            raise RuntimeError("Cannot flush: Producer not Running")
        self.message_sent.clear()
        try:
            async with asyncio.timeout(IDLE_GIVE_UP_S):
                await self.message_sent.wait()
        except TimeoutError:
            return False
        return True


def install_lean_buffer(producer: Any, *, max_messages: int | None = None) -> None:
    """Give a Faust producer that has not started the lean buffer in place of its own.

    `max_messages`: how many records it may hold before Faust's conductor stops handing
    input records to the streams until it drains (`wait_until_ebb`; Faust's default, 100).
    A commit writes every state changed since the last one at once, several hundred under
    load: at 100 each commit stopped the input while its writes were handed over one by
    one, and the records waiting then (and those aiokafka would not fetch meanwhile, their
    partition's buffer still full) came out hundreds of milliseconds late."""
    if producer.app.conf.producer_threaded:
        return  # its buffer feeds another thread's queue: keep Faust's
    old = producer.buffer
    if old.state != "init":
        raise RuntimeError("the producer's buffer is already running")
    lean = LeanProducerBuffer(loop=producer.loop, beacon=producer.beacon)
    lean.app = old.app
    if max_messages is not None:
        lean.max_messages = max_messages
    producer.buffer = lean


def unsent(buffer: Any) -> int:
    """Messages a Faust producer buffer has not handed to the producer yet (Faust's own buffer
    knows only those queued)."""
    return buffer.unsent if isinstance(buffer, LeanProducerBuffer) else int(buffer.size)


def flush_sent(producer: Any) -> Callable[[], Awaitable[None]]:
    """Wait until every record sent through a Faust producer before the call is acknowledged
    by the broker, but not those sent meanwhile (the agents carry on while a commit waits).

    Faust's own `flush` returns once its send buffer has sent nothing for 0.1 s, which under
    load can leave records in it; with the lean buffer this waits until the buffer has handed
    over every record queued before the call (`wait_handed_over`), then for the producer's
    batches (aiokafka's flush waits for the batches it holds when called: those records and
    any sent with them). With Faust's own buffer (a threaded producer) it repeats Faust's
    flush until nothing is queued."""

    async def flush() -> None:
        buffer = producer.buffer
        if isinstance(buffer, LeanProducerBuffer):
            await buffer.wait_handed_over(buffer.put_total)
            # Faust's aiokafka producer (None before it starts).
            kafka = getattr(producer, "_producer", None)
            if kafka is not None:
                await kafka.flush()
            return
        while True:
            await producer.flush()
            if not unsent(buffer):
                return

    return flush
