"""The input gate: the input topics' partitions leave the consumer's fetches while the entity
stage needs room, and come back once it does not, through Faust's own flow control (a
stand-in consumer with the semantics of `Consumer.on_buffer_full` / `on_buffer_drop`)."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from linkwatch.backpressure import InputGate


class TP(NamedTuple):
    topic: str
    partition: int


class Consumer:
    """Faust's: fetches the active partitions; a full buffer takes one out, its drop puts it
    back (only if it took it out)."""

    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = set(assigned)
        self.active = set(assigned)
        self.buffered: set[TP] = set()

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def on_buffer_full(self, tp: TP) -> None:
        self.active.discard(tp)
        self.buffered.add(tp)

    def on_buffer_drop(self, tp: TP) -> None:
        if tp in self.buffered:
            self.active.add(tp)
            self.buffered.discard(tp)

    def rebalance(self, assigned: set[TP]) -> None:
        self.assigned = set(assigned)
        self.active = set(assigned)  # Faust: every assigned partition fetched again


class Entities:
    def __init__(self) -> None:
        self.needed = False
        self.marks_sent = 0
        self.held = 100

    def room_needed(self) -> bool:
        return self.needed

    async def send_marks(self) -> None:
        self.marks_sent += 1


CLICKS = [TP("clicks", p) for p in range(2)]
SHARES = [TP("shares", p) for p in range(2)]
TICKS = [TP("ticks", p) for p in range(2)]


def gate(consumer: Consumer, entities: Entities, paused: list[float]) -> InputGate:
    now = iter(float(n) for n in range(100))
    return InputGate(
        consumer,
        frozenset({"clicks", "shares"}),
        entities,
        in_recovery=lambda: False,
        on_paused=paused.append,
        clock=lambda: next(now),
    )


async def test_the_inputs_pause_while_room_is_needed_and_the_ticks_never_do() -> None:
    consumer = Consumer({*CLICKS, *SHARES, *TICKS})
    entities = Entities()
    paused: list[float] = []
    inputs = gate(consumer, entities, paused)
    await inputs.check()
    assert consumer.active == {*CLICKS, *SHARES, *TICKS}
    entities.needed = True
    await inputs.check()
    assert consumer.active == set(TICKS)
    assert entities.marks_sent == 1  # sent now, not at the next write
    await inputs.check()
    assert consumer.active == set(TICKS)
    entities.needed = False
    await inputs.check()
    assert consumer.active == {*CLICKS, *SHARES, *TICKS}
    assert paused == [1.0, 1.0]  # seconds, counted as they pass
    await inputs.check()
    assert paused == [1.0, 1.0]


async def test_a_rebalance_while_paused_is_paused_again_and_a_revoked_partition_not_fetched() -> (
    None
):
    consumer = Consumer({*CLICKS, *TICKS})
    entities = Entities()
    inputs = gate(consumer, entities, [])
    entities.needed = True
    await inputs.check()
    consumer.rebalance({CLICKS[0], SHARES[0], TICKS[0]})  # clicks 1 revoked
    assert CLICKS[0] in consumer.active
    await inputs.check()
    assert consumer.active == {TICKS[0]}
    entities.needed = False
    await inputs.check()
    assert consumer.active == {CLICKS[0], SHARES[0], TICKS[0]}  # not clicks 1


async def test_in_recovery_the_inputs_are_left_for_faust_to_resume() -> None:
    consumer = Consumer({*CLICKS, *TICKS})
    entities = Entities()
    recovering = [False]
    inputs = gate(consumer, entities, [])
    inputs.in_recovery = lambda: recovering[0]
    entities.needed = True
    await inputs.check()
    recovering[0] = True
    entities.needed = False
    await inputs.check()
    assert consumer.active == set(TICKS)  # Faust resumes every partition when it is done
    assert inputs.paused_at is None


async def test_a_pause_that_lets_no_record_go_ends_and_the_inputs_flow_as_long() -> None:
    """A mark that never comes (a bug, a failed send) costs the bound, not the stream."""
    consumer = Consumer({*CLICKS, *TICKS})
    entities = Entities()
    entities.needed = True
    clock = [0.0]
    inputs = gate(consumer, entities, [])
    inputs.clock = lambda: clock[0]
    inputs.stall_s = 30
    await inputs.check()
    assert consumer.active == set(TICKS)
    for entities.held in (90, 90, 90):  # some let go at 10 s, then none
        clock[0] += 10
        await inputs.check()
        assert consumer.active == set(TICKS)
    clock[0] += 10  # 30 s since one was last let go
    await inputs.check()
    assert consumer.active == {*CLICKS, *TICKS}
    clock[0] += 29
    await inputs.check()
    assert consumer.active == {*CLICKS, *TICKS}  # flowing as long as it stalled
    clock[0] += 1
    await inputs.check()
    assert consumer.active == set(TICKS)  # room still needed: paused again


async def test_the_two_agents_checks_do_not_interleave() -> None:
    """Each agent checks after its batches; sending the marks lets the event loop run. A
    check that counted its pause after that could count backwards (a negative increment,
    which Prometheus refuses, crashed the journeys agent)."""
    consumer = Consumer({*CLICKS, *TICKS})
    entities = Entities()
    entities.needed = True
    sends = iter([0.01, 0.0])

    async def send_marks() -> None:  # the first send waits on the broker, the second not
        await asyncio.sleep(next(sends))

    entities.send_marks = send_marks  # type: ignore[method-assign]
    paused: list[float] = []
    inputs = gate(consumer, entities, paused)
    await asyncio.gather(inputs.check(), inputs.check())
    assert paused == [1.0]
    assert consumer.active == set(TICKS)
