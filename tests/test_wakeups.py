from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkwatch.codec import decode_event
from linkwatch.disk_wakeups import DiskWakeups
from linkwatch.engine import JourneyEngine
from linkwatch.errors import RecordRejected
from linkwatch.journeys import load_journeys
from linkwatch.partition import PartitionProcessor
from linkwatch.simulate import generate
from linkwatch.store import cached_user_states
from linkwatch.wakeups import HeapWakeups

USERS = st.sampled_from(["a", "b", "ü", "user-10", ""])
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(-5, 60), USERS),
        st.tuples(st.just("take"), st.integers(-10, 70), st.integers(1, 4)),
    ),
    max_size=80,
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=STEPS, horizon=st.sampled_from([0, 3, 60_000]))
def test_both_indexes_give_entries_in_time_order_once_passed(
    steps: list[tuple[str, int, Any]], horizon: int, tmp_path: Path
) -> None:
    """Entries come out in time order once the watermark passes them, at most `limit` at a
    time, whatever the interleaving, and whichever of the disk index's entries are near
    (in memory) or far (in its database). The heap keeps a repeated entry twice, the disk
    index once."""
    heap = HeapWakeups()
    disk = DiskWakeups(tmp_path / "wakeups", horizon=horizon)
    in_heap: list[tuple[int, str]] = []  # the models: a multiset and a set
    on_disk: set[tuple[int, str]] = set()
    try:
        for op, at, arg in steps:
            if op == "push":
                heap.push(at, arg)
                disk.push(at, arg)
                in_heap.append((at, arg))
                on_disk.add((at, arg))
                continue
            due = sorted(e for e in in_heap if e[0] <= at)[:arg]
            assert heap.take_due(at, arg) == due
            for entry in due:
                in_heap.remove(entry)
            due = sorted(e for e in on_disk if e[0] <= at)[:arg]
            assert disk.take_due(at, arg) == due
            on_disk -= set(due)
            assert heap.entries() == sorted(in_heap)
            assert disk.entries() == sorted(on_disk)
    finally:
        disk.close()
    assert not (tmp_path / "wakeups").exists()


def test_a_new_disk_index_starts_empty(tmp_path: Path) -> None:
    """What a previous run left at the path is stale: the index is rebuilt from the states."""
    old = DiskWakeups(tmp_path / "w")
    old.push(5, "someone")
    old._db.close()
    assert DiskWakeups(tmp_path / "w").entries() == []


@pytest.mark.parametrize("capacity", [0, 50])
def test_journeys_on_disk_give_what_journeys_in_memory_give(capacity: int, tmp_path: Path) -> None:
    """A partition whose states are in a bounded cache over a table and whose wake-ups are
    on disk gives the same outputs, in the same order, as one holding everything in memory,
    with the watermark moved in small and large steps (chunks of 7 entries)."""
    lines = list(generate(users=300, seed=11, start_ms=1_732_233_600_000, bad_ratio=0.01))
    journeys = load_journeys()

    def run(processor: PartitionProcessor, flush: Any) -> list[Any]:
        outputs: list[Any] = []
        for n, line in enumerate(lines):
            try:
                event = decode_event(line)
                outputs.extend(processor.process(event).outputs)
            except RecordRejected:
                continue
            if n % 40 == 0:
                flush()
                if processor.watermark is not None:
                    outputs.extend(processor.advance_to(processor.watermark + 1))
        outputs.extend(processor.flush(close_open=True))
        return outputs

    expected = run(PartitionProcessor(JourneyEngine(journeys)), lambda: None)
    table: dict[bytes, bytes] = {}
    store = cached_user_states(
        table, 0, read=table.get, scan=lambda: list(table.items()), capacity=capacity, size=0
    )
    wakeups, expiries = DiskWakeups(tmp_path / "w"), DiskWakeups(tmp_path / "e")
    take_due = wakeups.take_due
    wakeups.take_due = lambda watermark, limit=7: take_due(watermark, min(limit, 7))  # type: ignore[method-assign]
    processor = PartitionProcessor(
        JourneyEngine(journeys), store, wakeups=wakeups, expiries=expiries
    )
    assert run(processor, store.flush) == expected
    assert len(expected) > 300
    processor.close()
