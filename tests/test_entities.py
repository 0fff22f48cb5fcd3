"""The entity stage: per-entity event-time order, levels, redeliveries, and agreement with the
reference driver however signals are batched, interleaved or partitioned."""

from __future__ import annotations

import gzip
import tempfile
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from linkwatch.disk_wakeups import DiskWakeups
from linkwatch.engine import Transition
from linkwatch.entities import (
    EntityRecord,
    EntityStage,
    Features,
    Offered,
    derive_signals,
    dump_record,
    load_record,
    record_key,
)
from linkwatch.events import ClickEvent, GroupChatEvent, PurchaseEvent, ShareEvent, parse_ts
from linkwatch.journeys import JourneySet
from linkwatch.replay import replay_lines
from linkwatch.signals import EntityOutput, EntityStep, Measure, Signal, member_hash, signal
from linkwatch.triggers import Cause, Trigger, TriggerContext
from tests.builders import MIN, T0, record
from tests.entity_driver import drive

HOUR = 60 * MIN
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample-events.jsonl.gz"


class Tally(NamedTuple):
    bucket: int  # index of the open bucket
    count: int
    quiet: int  # buckets closed with nothing in them


class TallyLogic:
    """Counts signals per hour bucket; at each bucket close reports the count and forwards it
    to `total:<prefix>` one level up. Forgets the entity after two empty buckets."""

    prefixes = ("tally",)

    def apply(self, entity: str, state: Any | None, sig: Signal) -> EntityStep:
        bucket = sig.ts // HOUR
        tally = state or Tally(bucket, 0, 0)
        assert bucket == tally.bucket, "a wake must have closed the earlier bucket first"
        return EntityStep(tally._replace(count=tally.count + 1, quiet=0), [])

    def wake(self, entity: str, state: Any, at: int) -> EntityStep:
        tally: Tally = state
        outputs: list[EntityOutput] = []
        if tally.count:
            outputs.append(Measure("tally", (entity, str(tally.bucket)), tally.count))
            outputs.append(signal(3, "total:all", "count", at, {"n": tally.count}, entity, str(at)))
        quiet = tally.quiet + (0 if tally.count else 1)
        if quiet >= 2:
            return EntityStep(None, outputs)
        return EntityStep(Tally(tally.bucket + 1, 0, quiet), outputs)

    def next_wake(self, state: Any) -> int:
        return int((state.bucket + 1) * HOUR)

    def dump(self, state: Any) -> Any:
        return list(state)

    def load(self, data: Any) -> Any:
        return Tally(*data)


class TotalLogic:
    """Level 3: sums what the tallies forward; reports a running total at each one."""

    prefixes = ("total",)

    def apply(self, entity: str, state: Any | None, sig: Signal) -> EntityStep:
        total = (state or [0, sig.ts])[0] + sig.data["n"]
        return EntityStep([total, sig.ts], [Measure("total", (str(sig.ts),), total)])

    def wake(self, entity: str, state: Any, at: int) -> EntityStep:
        return EntityStep(None, [])  # a day after the last count: forget

    def next_wake(self, state: Any) -> int:
        return int(state[1] + 24 * HOUR)

    def dump(self, state: Any) -> Any:
        return state

    def load(self, data: Any) -> Any:
        return list(data)


def tally(name: str, ts: int, n: int) -> Signal:
    return signal(2, f"tally:{name}", "hit", ts, {}, str(n), str(ts))


def stage(store: dict[str, EntityRecord] | None = None, on_disk: Path | None = None) -> EntityStage:
    """With `on_disk`, each level's wake-up index is there (as with a store bounded in
    memory), with a horizon of a minute so that most entries go through the database."""
    wakeups = None
    if on_disk is not None:
        wakeups = {level: DiskWakeups(on_disk / str(level), horizon=MIN) for level in (2, 3)}
    return EntityStage([TallyLogic(), TotalLogic()], store, levels=(2, 3), wakeups=wakeups)


def reference(signals: list[Signal], until: int) -> list[EntityOutput]:
    """The driver over level 2, then over what level 2 forwarded to level 3."""
    level2 = [out for _, outs in drive(TallyLogic(), signals, until).values() for out in outs]
    forwarded = [out for out in level2 if isinstance(out, Signal)]
    level3 = [out for _, outs in drive(TotalLogic(), forwarded, until).values() for out in outs]
    return [out for out in level2 + level3 if not isinstance(out, Signal)]


def test_signals_apply_in_event_time_order_and_buckets_close_at_their_end() -> None:
    entities = stage()
    for sig in [tally("a", T0 + 30 * MIN, 2), tally("a", T0 + 5 * MIN, 1), tally("a", T0, 0)]:
        assert entities.offer(sig) is Offered.ACCEPTED
    first_hour = T0 // HOUR * HOUR + HOUR
    assert entities.run(first_hour - 1) == []  # the bucket is still open
    outputs = entities.run(first_hour)
    assert Measure("tally", ("tally:a", str(T0 // HOUR)), 3) in outputs
    assert Measure("total", (str(first_hour),), 3) in outputs


def test_a_redelivered_signal_is_recognised_and_a_late_one_refused() -> None:
    entities = stage()
    sig = tally("a", T0, 0)
    assert entities.offer(sig) is Offered.ACCEPTED
    assert entities.offer(sig) is Offered.DUPLICATE
    entities.run(T0)
    assert entities.offer(tally("a", T0 - 1, 1)) is Offered.LATE
    assert entities.offer(sig) is Offered.LATE  # applied already: its moment has passed


def test_an_entity_is_forgotten_when_its_logic_says_so() -> None:
    entities = stage()
    entities.offer(tally("a", T0, 0))
    entities.run(T0 + 6 * HOUR)
    assert record_key(2, "tally:a") not in entities.store
    assert entities.run(T0 + 48 * HOUR) == []
    assert entities.store == {}  # the level-3 total expired a day after its last count


def test_records_survive_their_wire_form_and_the_index_is_rebuilt() -> None:
    live = stage()
    for n in range(5):
        live.offer(tally("a", T0 + n * 20 * MIN, n))
    live.run(T0 + 50 * MIN)
    logic = TallyLogic()
    store = {
        key: load_record(logic, dump_record(logic, record))
        for key, record in live.store.items()
        if key.startswith("2|")
    }
    restarted = stage(store)
    restarted.watermarks[2] = live.watermarks[2]
    restarted.rebuild_index()

    def tallies(outputs: list[EntityOutput]) -> list[EntityOutput]:
        return [out for out in outputs if isinstance(out, Measure) and out.name == "tally"]

    assert tallies(restarted.run(T0 + 5 * HOUR)) == tallies(live.run(T0 + 5 * HOUR))


signal_lists = st.lists(
    st.tuples(st.sampled_from("abc"), st.integers(0, 6 * HOUR), st.integers(0, 40)),
    max_size=40,
).map(lambda items: [tally(name, T0 + offset, n) for name, offset, n in items])


@settings(max_examples=150, deadline=None)
@given(
    signals=signal_lists,
    steps=st.lists(st.integers(1, 2 * HOUR), min_size=1, max_size=12),
    order=st.randoms(use_true_random=False),
    partitions=st.integers(1, 3),
    on_disk=st.booleans(),
)
def test_outputs_match_the_reference_however_batched_interleaved_or_partitioned(
    signals: list[Signal], steps: list[int], order: Any, partitions: int, on_disk: bool
) -> None:
    """Signals arrive in any order before the watermark passes them, the watermark moves in
    arbitrary jumps, entities are spread over partitions that only share signals and marks:
    the outputs are those of the reference driver. With the wake-up indexes in memory, and
    on disk (where stale entries are not skipped by a map of due times but found stale)."""
    with tempfile.TemporaryDirectory() as where:
        stages = [
            stage(on_disk=Path(where) / str(n) if on_disk else None) for n in range(partitions)
        ]
        outputs = drive_stages(stages, signals, steps, order)
        for part in stages:
            part.close()
    assert Counter(outputs) == Counter(reference(signals, T0 + 10 * HOUR))


def drive_stages(
    stages: list[EntityStage], signals: list[Signal], steps: list[int], order: Any
) -> list[EntityOutput]:
    until = T0 + 10 * HOUR
    partitions = len(stages)

    def owner(entity: str) -> EntityStage:
        return stages[sum(entity.encode()) % partitions]

    waiting = list(signals)
    order.shuffle(waiting)
    watermark = T0 - 1
    outputs: list[EntityOutput] = []
    for step in [*steps, until]:
        watermark = min(watermark + step, until) if step != until else until
        arrived = [s for s in waiting if s.ts <= watermark]
        waiting = [s for s in waiting if s.ts > watermark]
        for sig in arrived + arrived[:2]:  # some redelivered
            owner(sig.entity).offer(sig)
        for level in (2, 3):
            for part in stages:
                for out in part.advance(level, watermark):
                    if isinstance(out, Signal):
                        owner(out.entity).offer(out)
                    else:
                        outputs.append(out)
    return outputs


def test_an_index_on_disk_finds_an_early_entry_stale_and_keeps_the_record_as_it_was(
    tmp_path: Path,
) -> None:
    """A signal that comes before a record's next time leaves an entry there; once it is
    applied the entry of the record's later time stays. Taken, an entry whose record has
    nothing due yet changes nothing and is put back at the record's true next time."""
    writes: list[str] = []

    class Store(dict[str, EntityRecord]):
        def __setitem__(self, key: str, value: EntityRecord) -> None:
            writes.append(key)
            super().__setitem__(key, value)

    entities = stage(Store(), on_disk=tmp_path)
    entities.offer(tally("a", T0, 0))
    entities.offer(tally("a", T0 + 10 * MIN, 1))  # not first: no entry of its own
    indexes = entities._indexes
    assert indexes is not None
    assert [at for at, _ in indexes[2].entries()] == [T0]
    entities.run(T0)  # applies the first; the record's next time is the second's
    assert [at for at, _ in indexes[2].entries()] == [T0 + 10 * MIN]
    # An early entry, as a signal applied since would leave.
    indexes[2].push(T0 + 5 * MIN, "2|tally:a")
    before = len(writes)
    assert entities.run(T0 + 6 * MIN) == []
    assert len(writes) == before  # nothing due: not rewritten
    assert [at for at, _ in indexes[2].entries()] == [T0 + 10 * MIN]  # held once
    assert len(entities.store["2|tally:a"].pending) == 1
    entities.close()


# -- what stage 1 derives ---------------------------------------------------------------------

ALL = Features(links=True, communities=True, fission=True, tiers=True, final_level=5)


def click(**fields: Any) -> ClickEvent:
    return ClickEvent.model_validate(record("click", link_id="L1", **fields))


def test_a_click_feeds_its_link_campaign_and_share() -> None:
    event = click(campaign_id="c1", ref_share_id="s1", landing_status=404)
    found = {(s.entity, s.kind): s for s in derive_signals([event], ALL)}
    assert set(found) == {("link:L1", "click"), ("campaign:c1", "click"), ("share:s1", "click")}
    assert found["link:L1", "click"].data == {"failed": True, "via_share": True}
    assert found["share:s1", "click"].data == {"clicker": "u1"}
    assert derive_signals([click(landing_status=302)], ALL)[0].data["failed"] is False
    off = Features(links=False, communities=True, fission=False, tiers=True, final_level=5)
    assert derive_signals([event], off) == []


def test_purchases_shares_and_chat_feed_their_entities() -> None:
    purchase = PurchaseEvent.model_validate(record("purchase", amount="19.90", ref_share_id="s1"))
    share = ShareEvent.model_validate(record("share", share_id="s9"))
    chat = GroupChatEvent.model_validate(record("group_chat", group_id="G1"))
    found = {
        (s.level, s.entity, s.kind): s.data for s in derive_signals([purchase, share, chat], ALL)
    }
    assert found[2, "share:s1", "purchase"] == {
        "buyer": "u1",
        "amount": str(Decimal("19.90")),
        "currency": "CNY",
    }
    assert found[5, "user:u1", "purchase"]["via_share"] == "s1"
    assert found[5, "user:u1", "share"] == {"share_id": "s9"}
    assert found[2, "group:G1", "chat"] == {"action": "message", "member": member_hash("u1")}


def dropoff(context: TriggerContext) -> Trigger:
    return Trigger(
        trigger_id="t1",
        type="dropoff",
        journey="j",
        user_id="u1",
        last_step="a",
        missed_step="b",
        cause=Cause.DISTRACTED,
        remedy="r",
        event_time="2024-11-22T00:30:00Z",
        deadline="2024-11-22T00:30:00Z",
        last_step_at="2024-11-22T00:00:00Z",
        started_by="e1",
        context=context,
    )


def decided(trigger: Trigger) -> Transition:
    return Transition("j", "dropped_off", "b", Cause.DISTRACTED, trigger)


def test_a_dropoff_right_after_a_click_counts_against_its_link_at_the_deadline() -> None:
    after_click = dropoff(TriggerContext(link_id="L1", page="product", campaign_id="c1"))
    found = derive_signals([decided(after_click)], ALL)
    assert {s.entity for s in found} == {"link:L1", "campaign:c1"}
    assert all(s.kind == "dropoff" and s.data == {"journey": "j", "step": "b"} for s in found)
    assert {s.ts for s in found} == {parse_ts("2024-11-22T00:30:00Z")}
    not_a_click = dropoff(TriggerContext(campaign_id="c1"))  # e.g. a purchase reached it
    assert derive_signals([decided(not_a_click)], ALL) == []


def test_a_trigger_released_after_quiet_hours_is_not_a_second_dropoff() -> None:
    """The drop-off counted when it happened; its trigger may go out hours later."""
    after_click = dropoff(TriggerContext(link_id="L1", page="product"))
    assert derive_signals([after_click], ALL) == []


def test_replaying_the_sample_refuses_no_signal(default_journeys: JourneySet) -> None:
    """Offline every signal is later than its level's watermark: none is refused as late."""
    with gzip.open(SAMPLE, "rb") as lines:
        report = replay_lines(lines, default_journeys, close_open=True).report
    assert report.signals_refused == 0
    assert report.records  # and the sample does show alerts and tier changes
