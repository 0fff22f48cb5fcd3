"""Live watermarks: several sources per partition, idleness, wall-clock ticks, restore."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from linkwatch.codec import decode_event
from linkwatch.engine import JourneyEngine, Verdict
from linkwatch.errors import RecordRejected, RejectReason
from linkwatch.journeys import JourneySet, load_journeys
from linkwatch.partition import PartitionProcessor
from linkwatch.reload import shapes_of
from linkwatch.simulate import generate
from linkwatch.triggers import Trigger
from tests.builders import at, raw

IDLE = 5_000
WALL = 1_800_000_000_000  # the wall clock in these tests: far after the event times
STALL = 1_000  # a longer gap between ticks: the worker could not read


def live(journeys: JourneySet) -> PartitionProcessor:
    return PartitionProcessor(
        JourneyEngine(journeys), idle_timeout_ms=IDLE, started_at=WALL, stall_ms=STALL
    )


def declared(journeys: JourneySet) -> PartitionProcessor:
    """Live, with two declared sources (topics) that hold the watermark until they report."""
    return PartitionProcessor(
        JourneyEngine(journeys),
        idle_timeout_ms=IDLE,
        started_at=WALL,
        sources=["clicks", "buys"],
        stall_ms=STALL,
    )


def tick_through(p: PartitionProcessor, start: int, end: int, every: int = 200) -> list[Trigger]:
    """Ticks every `every` ms after `start` up to `end`, as a worker that can read gets them
    (a longer gap between reads is time it could not read: no source's silence)."""
    fired: list[Trigger] = []
    for t in range(start + every, end + 1, every):
        fired += triggers(p.on_tick(t))
    return fired


def cart(eid: str, ts: int, user: str = "u1") -> bytes:
    return raw(event_id=eid, user_id=user, ts=ts, page="cart")


def triggers(outputs: list[object]) -> list[Trigger]:
    return [o for o in outputs if isinstance(o, Trigger)]


def test_watermark_follows_the_slowest_active_source(cart_journeys: JourneySet) -> None:
    p = live(cart_journeys)
    p.process(decode_event(cart("a", at(0))), source="clicks", now_ms=WALL)
    p.process(decode_event(raw("purchase", event_id="b", ts=at(0))), source="buys", now_ms=WALL)
    # Clicks race ahead by an hour (a big batch); purchases lag: the watermark waits for them.
    for i in range(60):
        p.process(decode_event(cart(f"c{i}", at(i + 1), user=f"x{i}")), "clicks", WALL + i)
    assert p.watermark == at(0) - 10_000
    # A purchase one minute in is not late, though clicks are an hour ahead.
    result = p.process(decode_event(raw("purchase", event_id="d", ts=at(1))), "buys", WALL + 60)
    assert result.verdict is Verdict.ACCEPTED


def test_an_idle_source_stops_holding_the_watermark_back(cart_journeys: JourneySet) -> None:
    p = live(cart_journeys)
    p.process(decode_event(raw("purchase", event_id="b", ts=at(0))), source="buys", now_ms=WALL)
    p.process(decode_event(cart("a", at(0))), source="clicks", now_ms=WALL)
    assert tick_through(p, WALL, WALL + IDLE - 200) == []
    p.process(decode_event(cart("c", at(40), user="u2")), source="clicks", now_ms=WALL + IDLE)
    # purchases silent for IDLE: the clicks alone move the watermark; the cart's 30m passed.
    assert p.watermark == at(40) - 10_000
    assert [t.missed_step for t in triggers(p.advance_to(p.watermark))] == []  # already fired
    assert "u1" not in p.store or not p.store["u1"].instances


def test_all_sources_idle_means_the_clock_moves_the_watermark(cart_journeys: JourneySet) -> None:
    p = live(cart_journeys)
    p.process(decode_event(cart("a", at(0))), source="clicks", now_ms=WALL)
    assert tick_through(p, WALL, WALL + IDLE - 200) == []
    assert triggers(p.on_tick(WALL + IDLE - 1)) == []  # not idle yet
    fired = triggers(p.on_tick(WALL + IDLE))
    assert [t.missed_step for t in fired] == ["checkout"]
    assert p.watermark == WALL


def test_recent_event_times_fire_on_the_clock_within_idle_timeout(
    cart_journeys: JourneySet,
) -> None:
    # Real-time traffic: event time == wall time. A cart at T has a 30m deadline; the partition
    # goes quiet; the drop-off fires once the clock passes the deadline by idle_timeout.
    now = at(0)
    p = live(cart_journeys)
    p.process(decode_event(cart("a", now)), source="clicks", now_ms=now)
    deadline = now + 30 * 60_000
    assert tick_through(p, now, deadline + IDLE - 200) == []
    assert triggers(p.on_tick(deadline + IDLE - 1)) == []
    assert [t.missed_step for t in triggers(p.on_tick(deadline + IDLE))] == ["checkout"]


def test_a_partition_with_no_events_since_start_advances_after_idle_timeout(
    cart_journeys: JourneySet,
) -> None:
    # After a restart, recovered state must still fire without any new event.
    original = live(cart_journeys)
    original.process(decode_event(cart("a", at(0))), source="clicks", now_ms=WALL)
    restarted = PartitionProcessor(
        JourneyEngine(cart_journeys), dict(original.store), idle_timeout_ms=IDLE, started_at=WALL
    )
    restarted.restore(original.watermark, {}, WALL)
    assert triggers(restarted.on_tick(WALL + IDLE - 1)) == []
    assert len(triggers(restarted.on_tick(WALL + IDLE))) == 1


def test_restore_keeps_the_watermark_and_source_progress(cart_journeys: JourneySet) -> None:
    p = live(cart_journeys)
    p.restore(at(100), {"clicks": at(100) + 10_000}, WALL)
    late = p.process(decode_event(cart("a", at(50))), source="clicks", now_ms=WALL)
    assert late.verdict is Verdict.LATE


def test_events_far_ahead_of_the_clock_are_rejected(cart_journeys: JourneySet) -> None:
    p = live(cart_journeys)
    with pytest.raises(RecordRejected) as info:
        p.process(decode_event(cart("a", WALL + 2 * 86_400_000)), source="clicks", now_ms=WALL)
    assert info.value.reason is RejectReason.FUTURE_TIMESTAMP
    assert "the clock" in info.value.message


def test_a_topic_more_than_a_day_ahead_of_a_lagging_one_is_not_a_broken_clock(
    cart_journeys: JourneySet,
) -> None:
    """Live, the watermark follows the slowest topic: a backfill read unevenly can put one topic
    days ahead of it. Only the clock says what is too far in the future."""
    p = PartitionProcessor(
        JourneyEngine(cart_journeys), idle_timeout_ms=IDLE, started_at=WALL, sources=["a", "b"]
    )
    p.process(decode_event(cart("slow", at(0))), "a", WALL)
    p.process(decode_event(cart("fast-1", at(1), user="u2")), "b", WALL)
    assert p.watermark == at(0) - 10_000
    days_ahead = decode_event(cart("fast-2", at(3 * 24 * 60), user="u2"))
    assert p.process(days_ahead, "b", WALL).verdict is Verdict.ACCEPTED


def test_a_partition_that_never_saw_an_event_does_not_follow_the_clock(
    cart_journeys: JourneySet,
) -> None:
    # Worker up before the data: historic events arriving later must not all be late.
    p = live(cart_journeys)
    assert p.on_tick(WALL + 10 * IDLE) == []
    assert p.watermark is None
    result = p.process(decode_event(cart("a", at(0))), source="clicks", now_ms=WALL + 10 * IDLE)
    assert result.verdict is Verdict.ACCEPTED


def test_a_declared_source_holds_the_watermark_until_it_reports(cart_journeys: JourneySet) -> None:
    p = declared(cart_journeys)
    for i in range(30):
        p.process(decode_event(cart(f"c{i}", at(i), user=f"x{i}")), "clicks", WALL + i)
    assert p.watermark is None  # purchases have not been read yet (they may be backlogged)
    first = p.process(decode_event(raw("purchase", event_id="b", ts=at(1))), "buys", WALL + 40)
    assert first.verdict is Verdict.ACCEPTED
    assert p.watermark == at(1) - 10_000


def test_a_declared_source_with_nothing_to_read_goes_idle(cart_journeys: JourneySet) -> None:
    p = declared(cart_journeys)
    p.process(decode_event(cart("a", at(0))), "clicks", WALL)
    tick_through(p, WALL, WALL + IDLE - 200)
    p.process(decode_event(cart("b", at(40), user="u2")), "clicks", WALL + IDLE - 1)
    assert p.watermark is None
    backlog: dict[str, bool] = {"buys": True}
    p.process(decode_event(cart("c", at(41), user="u3")), "clicks", WALL + IDLE, backlog.get)
    assert p.watermark is None  # buys has records waiting: busy, not idle
    p.process(decode_event(cart("d", at(42), user="u4")), "clicks", WALL + IDLE + 1)
    assert p.watermark == at(42) - 10_000


def test_the_clock_never_moves_the_watermark_past_records_waiting_to_be_read(
    cart_journeys: JourneySet,
) -> None:
    """A backfill: clicks were read first, purchases (declared, not reported yet) are still
    waiting. However long the wait, a tick must not jump the watermark to the clock, or every
    waiting purchase would arrive late."""
    p = declared(cart_journeys)
    p.process(decode_event(cart("a", at(0))), "clicks", WALL)
    waiting = {"clicks": False, "buys": True}
    assert p.on_tick(WALL + 10 * IDLE, waiting.get) == []
    assert p.watermark is None
    purchase = decode_event(raw("purchase", event_id="b", user_id="u9", ts=at(1)))
    assert p.process(purchase, "buys", WALL + 10 * IDLE, waiting.get).verdict is Verdict.ACCEPTED
    # Once nothing waits, an idle partition follows the clock again.
    drained = {"clicks": False, "buys": False}
    fired = []
    for t in range(WALL + 10 * IDLE + 1000, WALL + 20 * IDLE + 1, 1000):  # ticks, every second
        fired += triggers(p.on_tick(t, drained.get))
    assert fired
    assert p.watermark == WALL + 19 * IDLE


def test_silence_while_no_tick_could_arrive_is_not_idleness(cart_journeys: JourneySet) -> None:
    """The broker is down for longer than the idle timeout: no record and no tick reaches the
    worker. That time is no source's silence: records held back upstream during the outage,
    and sent as soon as it ends, are not late."""
    p = live(cart_journeys)
    p.process(decode_event(cart("a", at(0))), source="clicks", now_ms=WALL)
    p.on_tick(WALL + 200)
    back = WALL + 200 + 6 * IDLE  # the first tick after the outage
    assert p.on_tick(back) == []
    assert p.watermark == at(0) - 10_000  # not the clock
    held_back = decode_event(cart("b", at(1), user="u2"))
    assert p.process(held_back, source="clicks", now_ms=back + 100).verdict is Verdict.ACCEPTED
    # Silence after the outage, with ticks arriving, is idleness again.
    for t in range(back + 200, back + 100 + IDLE, 200):
        p.on_tick(t)
    fired = triggers(p.on_tick(back + 100 + IDLE))
    assert [t.missed_step for t in fired] == ["checkout", "checkout"]


def test_a_record_read_before_the_first_tick_after_an_outage_finds_no_source_idle(
    cart_journeys: JourneySet,
) -> None:
    """After an outage the first thing read may be a record, not a tick: it too proves the
    worker reads again, and the outage is no source's silence. (Judged without the discount,
    it found the purchases silent for the whole outage: the watermark followed the clicks
    alone, and held-back purchases were late.)"""
    p = declared(cart_journeys)
    p.process(decode_event(cart("a", at(0))), "clicks", WALL)
    p.process(decode_event(raw("purchase", event_id="b", user_id="u9", ts=at(0))), "buys", WALL)
    tick_through(p, WALL, WALL + 1000)
    back = WALL + 1000 + 6 * IDLE  # nothing read for 6 idle timeouts
    p.process(decode_event(cart("c", at(20), user="u2")), "clicks", back)
    assert p.watermark == at(0) - 10_000  # the purchases still hold it
    held_back = decode_event(raw("purchase", event_id="d", user_id="u2", ts=at(10)))
    assert p.process(held_back, "buys", back + 10).verdict is Verdict.ACCEPTED


def test_silence_before_a_stall_still_counts(cart_journeys: JourneySet) -> None:
    """Only the blind time is discounted: a source silent for most of the idle timeout
    before a stall is idle soon after it."""
    p = live(cart_journeys)
    p.process(decode_event(cart("a", at(0))), source="clicks", now_ms=WALL)
    for t in range(WALL + 200, WALL + IDLE - 2000 + 1, 200):
        p.on_tick(t)
    resumed = WALL + IDLE - 2000 + 3 * STALL  # a 3 s gap: 2 s beyond the stall threshold
    assert p.on_tick(resumed) == []
    assert [t.missed_step for t in triggers(p.on_tick(resumed + 1000))] == ["checkout"]


def test_ticks_that_keep_coming_late_do_not_postpone_idleness_for_ever(
    cart_journeys: JourneySet,
) -> None:
    """A slow broker hands every tick over 1.5 s after the last (more than the stall
    threshold): only the excess is blind time, so the silence still adds up. (Counting whole
    gaps, one partition of the 30 s outage test never went idle and its drop-offs never
    fired.)"""
    p = live(cart_journeys)
    p.process(decode_event(cart("a", at(0))), source="clicks", now_ms=WALL)
    fired = []
    for t in range(WALL + 1500, WALL + 4 * IDLE, 1500):
        fired += triggers(p.on_tick(t))
    assert [t.missed_step for t in fired] == ["checkout"]


@pytest.mark.parametrize("limit", [1, 3, 40])
def test_a_fire_limit_cuts_the_firing_without_changing_it(limit: int) -> None:
    """With a `fire_limit`, a watermark jumping past many deadlines and expiries decides at
    most that many per call, `behind` until done; drained with `catch_up` before each next
    event (as the worker does), the outputs are those of deciding everything at once, in
    the same order."""
    lines = list(generate(users=400, seed=5, start_ms=1_732_233_600_000, bad_ratio=0.0))
    journeys = load_journeys()

    def run(processor: PartitionProcessor) -> tuple[list[Any], int]:
        outputs: list[Any] = []
        calls = 0  # catch-ups that found the partition behind after a full chunk

        def drain() -> None:
            nonlocal calls
            while processor.behind:
                calls += 1
                outputs.extend(processor.catch_up())

        for n, line in enumerate(lines):
            drain()
            try:
                outputs.extend(processor.process(decode_event(line)).outputs)
            except RecordRejected:
                continue
            if n % 500 == 499 and processor.watermark is not None:
                drain()  # then a jump of six hours: most of what is open, and idle, is due
                outputs.extend(processor.advance_to(processor.watermark + 6 * 3_600_000))
                assert_open_counts(processor)
        drain()
        outputs.extend(processor.flush(close_open=True))
        assert_open_counts(processor)
        return outputs, calls

    expected, _ = run(PartitionProcessor(JourneyEngine(journeys)))
    cut, calls = run(PartitionProcessor(JourneyEngine(journeys), fire_limit=limit))
    assert cut == expected
    assert sum(isinstance(o, Trigger) for o in expected) > 50
    assert calls > 2 * 400 // limit  # it did fall behind, chunk after chunk


def test_a_restored_partition_catches_up_on_what_was_due_when_written(
    cart_journeys: JourneySet,
) -> None:
    """A worker that wrote its states mid-way through a long catch-up and crashed restores
    a watermark past deadlines still open: they are the first thing decided."""
    p = PartitionProcessor(JourneyEngine(cart_journeys))
    p.process(decode_event(cart("a", at(0))))
    store = dict(p.store)
    restored = PartitionProcessor(JourneyEngine(cart_journeys), store, fire_limit=5)
    restored.restore(at(3600), {"": at(3600)}, None)
    assert restored.behind
    assert [t.missed_step for t in triggers(restored.catch_up())] == ["checkout"]
    assert not restored.behind


def assert_open_counts(processor: PartitionProcessor) -> None:
    """The open instances counted from transitions are those the states hold."""
    counted = {journey: n for journey, n in processor.open_counts.items() if n}
    assert counted == Counter(journey for journey, _ in processor.open_instances())


class CountingStore(dict[str, Any]):
    """States whose passes over all of them are counted."""

    passes = 0

    def items(self) -> Any:
        self.passes += 1
        return super().items()


def test_a_partition_loaded_under_the_same_journeys_reads_its_states_once(
    cart_journeys: JourneySet,
) -> None:
    """Restored and checked against the journeys it was written under (the same ones), a
    partition reads its states once, to rebuild its index, and counts their open instances
    then; a second pass (a million states on RocksDB) is only for changed journeys."""
    p = PartitionProcessor(JourneyEngine(cart_journeys))
    for n in range(5):
        p.process(decode_event(cart(f"e{n}", at(n), user=f"u{n}")))
    p.advance_to(at(10))
    store = CountingStore(p.store)
    loaded = PartitionProcessor(JourneyEngine(cart_journeys), store)
    loaded.restore(p.watermark, {"": at(4)}, None)
    assert loaded.reconfigure(loaded.engine, since=shapes_of(cart_journeys)) == []
    assert store.passes == 1
    assert_open_counts(loaded)
    assert loaded.open_counts["cart_to_purchase"] == 5


def test_open_counts_follow_a_flood_applied_on_arrival(cart_journeys: JourneySet) -> None:
    """A user's buffer beyond `max_pending` is applied as events arrive, before any watermark
    moves: the instances that opens are counted too."""
    p = PartitionProcessor(JourneyEngine(cart_journeys))
    for n in range(cart_journeys.max_pending + 3):  # all at one moment: never passed
        p.process(decode_event(cart(f"e{n}", at(0))))
    assert p.open_counts["cart_to_purchase"] == 1
    assert_open_counts(p)
