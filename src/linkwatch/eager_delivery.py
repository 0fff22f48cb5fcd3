"""Hand each fetched record to its stream without a trip through the event loop.

Faust's consumer (faust-streaming 0.15.3, `Consumer._drain_messages`) delivers every record
it fetched with `await self.wait_first(callback(message), self.suspend_flow.wait())`, so that
a rebalance can abandon a delivery stuck on a full stream queue. `wait_first` makes four
tasks per record (the delivery, the flow event, the service's stopped and crashed events)
and cancels three, and the record reaches its stream only after the event loop has run
everything else that was ready: the agents' batches, a commit's writes. A fetch of a few
hundred records then took hundreds of milliseconds to hand over, and aiokafka fetches no
more for a partition while records of it are still waiting in its buffer.

Here the delivery starts at once. Most deliveries finish without waiting (the record is
decoded and put in a queue with room), and that is the whole of it. One that has to wait
(a full queue, paused flow, a producer buffer over its bound) goes on from where it stopped
under Faust's own `wait_first`, which abandons it as before if the flow is suspended first.

Measured on 2026-11-24 (`bench/service.py --skip-throughput --trickle-rate 735`, with the
probes' stages): the time from a probe's acknowledgement to its trigger leaving the worker
fell from p50 68-87 ms to 41-50 ms (with the send buffer's bound raised too,
`install_lean_buffer`). Records/s at full load (`--events 60000 --skip-latency
--worker-only`): 2,144-2,542 before (4 runs), 2,161-2,883 after (6 runs), within the noise.
"""

from __future__ import annotations

import inspect
from collections.abc import Coroutine, Generator
from typing import Any

from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from mode import Service
from mode.services import WaitArgT, WaitResults


class _Resumed:
    """Awaitable that goes on running a coroutine which has already run up to its first
    wait (`first`, what it yielded there), as if it had been awaited from the start."""

    __slots__ = ("_coroutine", "_first")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coroutine = coroutine
        self._first = first

    def __await__(self) -> Generator[Any, None, Any]:
        coroutine, waiting_on = self._coroutine, self._first
        while True:
            try:
                yield waiting_on
            except BaseException as exc:  # a cancellation, thrown in where it waits
                try:
                    waiting_on = coroutine.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                waiting_on = coroutine.send(None)
            except StopIteration as done:
                return done.value


class EagerWaitFirst(Service):
    """`wait_first` for a `mode.Service` whose first argument is a coroutine: the coroutine
    runs at once, and if it finishes without waiting it is the winner and the others are
    never awaited. Otherwise (or with a timeout, or a service already stopping) it is
    `mode`'s `wait_first`, going on with the coroutine where it stopped."""

    async def wait_first(self, *coros: WaitArgT, timeout: Any = None) -> WaitResults:
        first = coros[0] if coros else None
        if (
            timeout is not None
            or not inspect.iscoroutine(first)
            or self._stopped.is_set()
            or self._crashed.is_set()
        ):
            return await super().wait_first(*coros, timeout=timeout)
        try:
            waiting_on = first.send(None)
        except StopIteration as done:
            _close(coros[1:])
            return WaitResults([first], [done.value], False)
        except BaseException:
            _close(coros[1:])
            raise
        resumed = _Resumed(first, waiting_on)
        results = await super().wait_first(resumed, *coros[1:])  # (timeout is None here)
        # Callers match winners against what they passed: the coroutine, not its wrapper.
        winners = [first if winner is resumed else winner for winner in results.done]
        return WaitResults(winners, results.results, results.stopped)


def _close(coros: tuple[WaitArgT, ...]) -> None:
    for coro in coros:
        if inspect.iscoroutine(coro):
            coro.close()  # never started: closed, not left "never awaited"


class EagerDeliveryConsumer(EagerWaitFirst, AIOKafkaConsumer):
    """Faust's aiokafka consumer, delivering records as `EagerWaitFirst` runs them."""


def install_eager_delivery(app: Any) -> None:
    """Make the app's transport build `EagerDeliveryConsumer`s; before its consumer exists."""
    if app._consumer is not None:
        raise RuntimeError("the app's consumer is already made")
    app.transport.Consumer = EagerDeliveryConsumer
