"""A record's delivery starts at once, and waits, or gives way to a suspended flow, as Faust's."""

from __future__ import annotations

import asyncio
import gc
import inspect
import warnings
from typing import Any

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from mode import Service
from mode.services import WaitResults

from linkwatch.eager_delivery import EagerDeliveryConsumer, EagerWaitFirst, install_eager_delivery
from linkwatch.service import create_app
from linkwatch.settings import Settings


class Eager(EagerWaitFirst):
    """A bare service with the eager `wait_first`, as the worker's consumer has it."""


def no_coroutine_left_unawaited() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_a_delivery_that_does_not_wait_is_done_before_the_loop_runs_anything_else() -> None:
    order: list[str] = []

    async def deliver() -> int:
        order.append("delivered")
        return 7

    asyncio.get_running_loop().call_soon(order.append, "loop")
    delivery = deliver()
    results = await Eager().wait_first(delivery, asyncio.Event().wait())
    assert order == ["delivered"]  # with mode's wait_first the loop ran first: a task per record
    assert results == WaitResults([delivery], [7], False)
    await asyncio.sleep(0)
    assert order == ["delivered", "loop"]
    no_coroutine_left_unawaited()


async def test_with_mode_s_wait_first_the_loop_runs_before_the_delivery() -> None:
    """What the test above rules out: Faust's own way, a trip through the loop per record."""
    order: list[str] = []

    async def deliver() -> None:
        order.append("delivered")

    asyncio.get_running_loop().call_soon(order.append, "loop")
    await Service().wait_first(deliver(), asyncio.Event().wait())
    assert order == ["loop", "delivered"]


async def test_a_delivery_that_waits_goes_on_from_where_it_stopped() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    queue.put_nowait(0)  # full: the delivery has to wait for room
    steps: list[str] = []

    async def deliver() -> str:
        steps.append("started")
        await queue.put(1)
        steps.append("put")
        await asyncio.sleep(0)
        steps.append("done")
        return "ok"

    async def consume() -> None:
        await asyncio.sleep(0.01)
        steps.append(f"took {await queue.get()}")

    consumer = asyncio.create_task(consume())
    delivery = deliver()
    results = await Eager().wait_first(delivery, asyncio.Event().wait())
    await consumer
    assert steps == ["started", "took 0", "put", "done"]  # started once, not twice
    assert results == WaitResults([delivery], ["ok"], False)
    assert queue.get_nowait() == 1
    no_coroutine_left_unawaited()


async def test_a_flow_suspended_while_a_delivery_waits_abandons_it() -> None:
    """Faust's reason for `wait_first` here: a rebalance must not wait for a full queue."""
    suspend_flow = asyncio.Event()
    outcome: list[str] = []

    async def deliver() -> None:
        try:
            await asyncio.get_running_loop().create_future()  # a queue that never drains
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    asyncio.get_running_loop().call_later(0.01, suspend_flow.set)
    flow = suspend_flow.wait()
    results = await Eager().wait_first(deliver(), flow)
    assert results.done == [flow]
    await asyncio.sleep(0)
    assert outcome == ["cancelled"]


async def test_an_error_in_a_delivery_is_raised_and_nothing_is_left_unawaited() -> None:
    async def deliver() -> None:
        raise ValueError("bad record")

    with pytest.raises(ValueError, match="bad record"):
        await Eager().wait_first(deliver(), asyncio.Event().wait())
    no_coroutine_left_unawaited()


async def test_a_stopped_service_answers_as_mode_s_does() -> None:
    async def deliver() -> int:
        return 1

    eager, plain = Eager(), Service()
    for service in (eager, plain):
        service._stopped.set()
    assert (await eager.wait_first(deliver(), asyncio.Event().wait())).stopped
    assert (await plain.wait_first(deliver(), asyncio.Event().wait())).stopped


def test_faust_still_delivers_each_record_through_wait_first() -> None:
    """The consumer's drain loop is where this takes effect; an upgrade that changes how it
    delivers must be looked at again."""
    source = inspect.getsource(FaustConsumer._drain_messages)
    assert "self.wait_first(" in source
    assert "callback(message), self.suspend_flow.wait()" in source


def test_the_worker_s_consumer_delivers_eagerly(tmp_path: Any) -> None:
    app = create_app(Settings(data_dir=tmp_path)).app
    assert isinstance(app.consumer, EagerDeliveryConsumer)
    with pytest.raises(RuntimeError, match="already made"):
        install_eager_delivery(app)
