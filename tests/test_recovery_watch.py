from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from linkwatch.recovery_watch import RecoveryWatchdog, stalled_partitions


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


A, B, C = TP("states-changelog", 0), TP("states-changelog", 1), TP("watermarks-changelog", 2)


def test_only_unfinished_partitions_silent_for_the_timeout_are_stalled() -> None:
    offsets = {A: -1, B: 10, C: 7}
    highwaters = {A: 6, B: 10, C: 9}  # B is done
    # A never received anything since the start 31 s ago; C received a record 5 s ago.
    assert stalled_partitions(offsets, highwaters, {C: 95.0}, 69.0, 100.0, 30.0) == [A]
    assert stalled_partitions(offsets, highwaters, {C: 95.0}, 71.0, 100.0, 30.0) == []
    assert stalled_partitions(offsets, highwaters, {C: 60.0}, 0.0, 100.0, 30.0) == [A, C]


def test_a_record_from_before_this_recovery_does_not_count() -> None:
    assert stalled_partitions({A: 2}, {A: 6}, {A: 10.0}, 50.0, 85.0, 30.0) == [A]


@dataclass
class Recovery:
    active_offsets: dict[TP, int]
    active_highwaters: dict[TP, int]
    in_recovery: bool = True
    _recovery_started_at: float | None = 0.0
    _active_events_received_at: dict[TP, float] = field(default_factory=dict)


class Consumer:
    """Records seeks the way Faust's consumer does (a seek to 0 leaves the read offset)."""

    def __init__(self) -> None:
        self._read_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self.seeks: list[tuple[TP, int]] = []

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))
        if offset:
            self._read_offset[tp] = offset


@dataclass
class App:
    tables: Any
    consumer: Consumer


def test_the_watchdog_reseeks_a_stalled_partition_once_per_timeout_and_clears_its_read_offset() -> (
    None
):
    recovery = Recovery({A: -1, C: 4}, {A: 6, C: 9})
    consumer = Consumer()
    consumer._read_offset[A] = 6  # stale: would drop offsets 0..5 after a seek to 0
    now = [10.0]
    reseeks: list[int] = []
    watchdog = RecoveryWatchdog(
        App(type("Tables", (), {"recovery": recovery})(), consumer),
        timeout=30.0,
        on_reseek=reseeks.append,
        clock=lambda: now[0],
    )
    asyncio.run(watchdog.check())
    assert consumer.seeks == []  # not yet
    now[0] = 31.0
    recovery._active_events_received_at[C] = 20.0  # C is moving
    asyncio.run(watchdog.check())
    assert consumer.seeks == [(A, 0)]
    assert consumer._read_offset[A] is None
    assert reseeks == [1]
    now[0] = 45.0
    asyncio.run(watchdog.check())
    assert consumer.seeks == [(A, 0)]  # the re-seek restarted A's wait
    now[0] = 61.0
    asyncio.run(watchdog.check())
    assert consumer.seeks == [(A, 0), (A, 0), (C, 5)]
    recovery.in_recovery = False
    now[0] = 200.0
    asyncio.run(watchdog.check())
    assert len(consumer.seeks) == 3
