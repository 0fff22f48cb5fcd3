"""The entity stage's live adapter, without a broker: a batch of signals and marks is handled
in order, its outputs are delivered before any record it changed is written, each record is
written once per batch (in its partition's event context), and the next level's mark is sent
after the signals it covers. The tables and topics are stand-ins that record what happens, in
order."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

from linkwatch.entities import (
    EntityRecord,
    EntityStage,
    Offered,
    dump_record,
    dump_signal,
    load_signal,
)
from linkwatch.live_entities import (
    PACKED_MAX_BYTES,
    WAITING_PREFIX,
    BoundedMemory,
    EntityRecordStore,
    LiveEntities,
    SignalOutbox,
    bounded_runs,
    mark_message,
    pack_signals,
    signal_message,
    waiting_key,
)
from linkwatch.signals import Signal
from linkwatch.store import progress_key
from tests.builders import MIN
from tests.test_entities import HOUR, TallyLogic, TotalLogic, tally
from tests.test_service import RecordingTable

Log = list[tuple[str, Any]]


class Event:
    def __init__(self, partition: int, offset: int, value: bytes) -> None:
        self.message = SimpleNamespace(
            topic="linkwatch.signals", partition=partition, offset=offset, value=value
        )


def recording_send(log: Log) -> Any:
    async def send(**message: Any) -> asyncio.Future[None]:
        data = orjson.loads(message["value"])
        if isinstance(data, dict) and "signals" in data:  # packed: one entry per signal
            log.extend(("signal delivered", signal) for signal in data["signals"])
            log.extend(
                ("mark sent", {"mark": level, "from": source, "watermark": watermark})
                for level, source, watermark in data.get("marks", ())
            )
        else:
            log.append(("mark sent" if isinstance(data, dict) else "signal delivered", data))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    return send


def live(log: Log) -> LiveEntities:
    return LiveEntities(
        new_stage=lambda store, wakeups=None: EntityStage(
            [TallyLogic(), TotalLogic()], store, levels=(2, 3), wakeups=wakeups
        ),
        partitions=1,
        records=RecordingTable(log, "record"),
        progress=RecordingTable(log, "progress"),
        send_signal=recording_send(log),
        send_health=recording_send(log),
        send_profile=recording_send(log),
        on_measures=lambda measures: log.append(("measures", len(measures))),
        partition_of=lambda entity: 0,
    )


async def test_a_batch_delivers_its_outputs_then_writes_each_record_once() -> None:
    log: Log = []
    entities = live(log)
    hits = [signal_message(tally("a", 10 + n, n)) for n in range(5)]
    batch = [Event(0, n, value) for n, value in enumerate(hits)]
    batch.append(Event(0, 5, mark_message(2, 0, HOUR + 1)))  # closes hour 0 of tally:a
    await entities.on_batch(batch)

    forwarded = [data for what, data in log if what == "signal delivered"]
    assert [s[1] for s in forwarded] == ["total:all"]  # (level, entity, ...): its wire form
    records = [
        i
        for i, (what, key) in enumerate(log)
        if what == "record written" and not key.startswith(b"\x00")
    ]
    assert len(records) == 1  # five signals and a wake: one write
    assert isinstance(entities.records, RecordingTable)
    (key, partition), progress = entities.records.contexts
    assert key.endswith(b"tally:a")
    assert partition == 0  # in the event context of one of the batch's records
    # The progress the mark made follows the record, in the same changelog partition.
    assert progress == (progress_key(0), 0)
    delivered = log.index(("signal delivered", forwarded[0]))
    marked = log.index(("mark sent", {"mark": 3, "from": 0, "watermark": HOUR + 1}))
    assert delivered < marked < records[0]
    assert ("measures", 1) in log


async def test_every_write_of_records_is_closed_by_the_partitions_progress() -> None:
    """No mark moved anything, yet the progress follows the records: it closes them in their
    changelog partition (`commit_table`), or a recovery would drop them as unfinished."""
    log: Log = []
    entities = live(log)
    await entities.on_batch([Event(0, 0, signal_message(tally("a", 10, 0)))])
    assert isinstance(entities.records, RecordingTable)
    *records, progress = entities.records.contexts
    assert any(key.endswith(b"tally:a") for key, _ in records)
    assert progress == (progress_key(0), 0)  # last, in their changelog partition
    assert orjson.loads(entities.records[progress_key(0)])["closes_commit"] is True


async def test_a_failing_message_costs_that_message_not_the_batch() -> None:
    log: Log = []
    entities = live(log)
    batch = [
        Event(0, 0, b"not json"),
        Event(0, 1, signal_message(tally("b", 10, 1))),
    ]
    await entities.on_batch(batch)
    assert b"2|tally:b" in entities.records
    assert len(entities.stores[0]["2|tally:b"].pending) == 1  # the next message went through


def writes_of(log: Log, key: bytes) -> int:
    return sum(1 for what, written in log if what == "record written" and written == key)


def waiting_keys(table: Any) -> list[bytes]:
    return [key for key in table if key.startswith(WAITING_PREFIX.encode())]


async def test_a_busy_entity_costs_each_waiting_signal_its_own_bytes_once() -> None:
    """Signals wait for the watermark: those of one batch are written once, together under one
    key, the record's state only when it changes, and once applied their key is deleted."""
    log: Log = []
    entities = live(log)
    for batch in range(10):
        hits = [signal_message(tally("a", 10 + 10 * batch + n, n)) for n in range(10)]
        await entities.on_batch([Event(0, 10 * batch + n, v) for n, v in enumerate(hits)])
    record = b"2|tally:a"
    waiting = waiting_keys(entities.records)
    assert len(waiting) == 10  # one per batch
    assert all(writes_of(log, key) == 1 for key in waiting)
    assert sum(len(orjson.loads(entities.records[key])[1]) for key in waiting) == 100
    assert writes_of(log, record) == 1  # its state did not change while signals waited
    await entities.on_batch([Event(0, 100, mark_message(2, 0, HOUR + 1))])
    assert not waiting_keys(entities.records)
    assert writes_of(log, record) == 2  # the hour closed: a new state
    # Deleted only after the record their signals were applied to.
    last_write = max(n for n, entry in enumerate(log) if entry == ("record written", record))
    assert all(log.index(("record deleted", key)) > last_write for key in waiting)


async def test_a_record_recovered_without_the_progress_after_it_applies_no_signal_twice() -> None:
    """A restart may recover part of a flush: a record written with a signal applied, but not
    the partition's progress written after it. The key that holds the signal, with another
    still waiting, is there too: the record's own watermark says the first was applied."""
    entities = live([])
    first, second = tally("a", 10, 1), tally("a", 20, 2)
    await entities.on_batch(
        [Event(0, 0, signal_message(first)), Event(0, 1, signal_message(second))]
    )
    before = dict(entities.records)
    await entities.on_batch([Event(0, 2, mark_message(2, 0, 15))])  # applies the first only
    cut = before | {b"2|tally:a": entities.records[b"2|tally:a"]}
    assert cut.get(progress_key(0)) != entities.records[progress_key(0)]
    recovered = live([])
    recovered.records.update(cut)
    record = recovered.stage(0).store["2|tally:a"]
    assert record.pending == (second,)
    assert record == entities.stores[0]["2|tally:a"]


async def test_a_record_deleted_in_a_flush_cut_short_is_not_brought_back_by_its_signals() -> None:
    entities = live([])
    # tally:a's signal is applied and the tally forgotten; tally:b's keeps the key alive.
    await entities.on_batch(
        [
            Event(0, 0, signal_message(tally("a", 10, 1))),
            Event(0, 1, signal_message(tally("b", 10 * HOUR, 2))),
        ]
    )
    before = dict(entities.records)
    await entities.on_batch([Event(0, 2, mark_message(2, 0, 3 * HOUR + 1))])
    assert "2|tally:a" not in entities.stores[0]
    cut = before | {b"2|tally:a": entities.records[b"2|tally:a"]}  # without the progress
    recovered = live([])
    recovered.records.update(cut)
    assert "2|tally:a" not in recovered.stage(0).store
    assert recovered.stage(0).store["2|tally:b"].pending == (tally("b", 10 * HOUR, 2),)
    # Once that progress is durable (the next flush), the deleted record's key goes.
    await entities.on_batch([Event(0, 3, signal_message(tally("b", 10 * HOUR + 5, 3)))])
    assert b"2|tally:a" not in entities.records


async def test_signals_an_older_version_wrote_one_per_key_move_into_one_key() -> None:
    log: Log = []
    entities = live(log)
    old = [tally("c", 10, 1), tally("c", 11, 2)]
    for sig in old:
        key = waiting_key("2|tally:c", sig.signal_id).encode()
        entities.records[key] = orjson.dumps([0, "2|tally:c", dump_signal(sig)])
    entities.records[b"2|tally:c"] = orjson.dumps([0, [None, []]])
    await entities.on_batch([Event(0, 0, signal_message(tally("c", 12, 3)))])
    (packed,) = waiting_keys(entities.records)
    assert len(orjson.loads(entities.records[packed])[1]) == 3
    written = log.index(("record written", packed))
    assert all(log.index(("record deleted", key)) > written for key in old_keys(old))
    again = live([])
    again.records.update(entities.records)
    assert again.stage(0).store["2|tally:c"].pending == (*old, tally("c", 12, 3))


def old_keys(signals: list[Signal]) -> list[bytes]:
    return [waiting_key("2|tally:c", sig.signal_id).encode() for sig in signals]


async def test_a_recovered_stage_holds_the_same_records_and_signals() -> None:
    log: Log = []
    entities = live(log)
    hits = [signal_message(tally(name, 10 + n, n)) for n in range(5) for name in "ab"]
    await entities.on_batch([Event(0, n, v) for n, v in enumerate(hits)])
    await entities.on_batch([Event(0, 10, mark_message(2, 0, 12))])  # applies those up to 12
    recovered = live([])
    recovered.records.update(entities.records)
    recovered.progress.update(entities.progress)
    assert dict(recovered.stage(0).store.items()) == dict(entities.stores[0].items())
    assert any(record.pending for record in entities.stores[0].values())
    assert any(record.state is not None for record in entities.stores[0].values())
    # A redelivered signal is still known once recovered.
    assert recovered.stage(0).offer(tally("a", 14, 4)) is Offered.DUPLICATE


async def test_a_record_written_with_its_signals_inside_moves_them_out() -> None:
    """Records an older version wrote hold their waiting signals inside: recovered, they are
    rewritten in the new form at the next batch, and nothing waiting is lost."""
    entities = live([])
    old = EntityRecord(None, (tally("c", 10, 1), tally("c", 11, 2)))
    entities.records[b"2|tally:c"] = orjson.dumps([0, dump_record(TallyLogic(), old)])
    recovered = live([])
    recovered.records.update(entities.records)
    await recovered.on_batch([Event(0, 0, signal_message(tally("c", 12, 3)))])
    (packed,) = waiting_keys(recovered.records)
    assert len(orjson.loads(recovered.records[packed])[1]) == 3
    assert orjson.loads(recovered.records[b"2|tally:c"]) == [0, [None, []]]
    again = live([])
    again.records.update(recovered.records)
    assert len(again.stage(0).store["2|tally:c"].pending) == 3


def signal_partition(entity: str) -> int:
    return sum(entity.encode()) % 4


def test_packing_keeps_every_signal_once_in_order_per_partition_within_the_size_bound() -> None:
    big = "x" * 20_000  # 40 signals of ~20 KB: more than one record's worth for a partition
    signals = [Signal(2, f"tally:{n % 3}", "hit", 10 + n, f"s{n}", {"pad": big}) for n in range(40)]
    records = pack_signals(signals, signal_partition)
    assert all(len(value) <= PACKED_MAX_BYTES + 64 for _, value in records)
    unpacked: dict[int, list[Signal]] = {}
    for partition, value in records:
        unpacked.setdefault(partition, []).extend(
            load_signal(data) for data in orjson.loads(value)["signals"]
        )
    assert sorted(s.signal_id for got in unpacked.values() for s in got) == sorted(
        s.signal_id for s in signals
    )
    for partition, got in unpacked.items():
        assert all(signal_partition(s.entity) == partition for s in got)
        assert got == [s for s in signals if signal_partition(s.entity) == partition]
    assert len(records) > len(unpacked)  # the bound split some partition's signals


async def test_a_packed_record_offers_each_signal_and_a_bad_one_costs_only_itself() -> None:
    log: Log = []
    entities = live(log)
    ((_, value),) = pack_signals([tally("a", 10, 1), tally("b", 11, 2)], lambda _: 0)
    data = orjson.loads(value)
    data["signals"].insert(1, ["not", "a signal"])
    await entities.on_batch([Event(0, 0, orjson.dumps(data))])
    assert len(entities.stores[0]["2|tally:a"].pending) == 1
    assert len(entities.stores[0]["2|tally:b"].pending) == 1


def test_bounded_runs_stay_within_the_bound_and_keep_every_entry_once_in_order() -> None:
    entries = [b"x" * n for n in (3, 3, 3, 20, 1, 1)]
    runs = list(bounded_runs(entries, 8))
    assert [list(run) for run in runs] == [[0, 1], [2], [3], [4, 5]]  # 20 bytes: alone
    assert list(bounded_runs([], 8)) == []


def sent_records(sent: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(message["partition"], orjson.loads(message["value"])) for message in sent]


def capturing_send(sent: list[dict[str, Any]]) -> Any:
    async def send(**message: Any) -> asyncio.Future[None]:
        sent.append(message)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    return send


async def test_the_outbox_sends_one_record_per_partition_per_flush_signals_before_marks() -> None:
    """However many batches and ticks filled it: each partition gets its signals in the order
    added, then the newest mark of each (level, source), in one record."""
    sent: list[dict[str, Any]] = []
    outbox = SignalOutbox(capturing_send(sent), 2, lambda entity: int(entity.endswith("b")))
    first, second, other = tally("a", 10, 1), tally("a", 20, 2), tally("b", 15, 3)
    outbox.add_signals([first, other])
    outbox.add_mark(2, 0, 100)
    outbox.add_signals([second])
    outbox.add_mark(2, 0, 200)
    outbox.add_mark(2, 1, 150)
    outbox.add_mark(2, 1, 120)  # older than the one held: it adds nothing
    assert not sent  # held until the flush
    await outbox.flush()
    records = sent_records(sent)
    assert [partition for partition, _ in records] == [0, 1]
    marks = [[2, 0, 200], [2, 1, 150]]
    assert records[0][1] == {"signals": [dump_signal(first), dump_signal(second)], "marks": marks}
    assert records[1][1] == {"signals": [dump_signal(other)], "marks": marks}
    await outbox.flush()
    assert len(sent) == 2  # nothing held: nothing sent


async def test_a_record_of_signals_and_marks_applies_the_signals_before_the_marks() -> None:
    """As `test_a_batch_delivers_its_outputs_then_writes_each_record_once`, with the five
    signals and the mark in one packed record: the mark closes the hour they fall in."""
    log: Log = []
    entities = live(log)
    hits = [tally("a", 10 + n, n) for n in range(5)]
    ((_, value),) = pack_signals(hits, lambda _: 0, {0: {(2, 0): HOUR + 1}})
    await entities.on_batch([Event(0, 0, value)])
    forwarded = [data for what, data in log if what == "signal delivered"]
    assert [s[1] for s in forwarded] == ["total:all"]
    assert ("mark sent", {"mark": 3, "from": 0, "watermark": HOUR + 1}) in log


# -- bounded in memory (rocksdb://) ------------------------------------------------------------


def bounded(log: Log, where: Path, cache: int = 2, table: RecordingTable | None = None) -> Any:
    """`live`, with records read back from the table (standing for the partition's RocksDB
    database: one partition, so it holds only that partition's keys), at most `cache` of them
    decoded besides those that must be, and the wake-up indexes on disk."""
    entities = live(log)
    if table is not None:
        entities.records = table
    records = entities.records
    entities.bounded = BoundedMemory(
        partition_db=lambda partition: (records.get, lambda: list(records.items())),
        cache_max=cache,
        wakeups_dir=where,
    )
    return entities


def bound(entities: Any, **changes: Any) -> None:
    """Change how `entities` (made by `bounded`) is bounded: `fire_chunk`, `held_max`."""
    entities.bounded = replace(entities.bounded, **changes)


def traffic(hours: int = 6, names: str = "abcdefghij") -> list[list[Event]]:
    """Batches of signals for ten tallies, each hour some of them quiet, then a mark that
    closes the hour before and passes the hour's first signals: the rest wait for the next
    batch's mark."""
    batches: list[list[Event]] = []
    offset = 0
    for hour in range(hours):
        batch: list[Event] = []
        for n, name in enumerate(names):
            if (n + hour) % 3 == 0:
                continue  # quiet this hour: two quiet hours forget a tally
            for k in range(3):
                hit = tally(name, hour * HOUR + k * MIN, k)
                batch.append(Event(0, offset, signal_message(hit)))
                offset += 1
        batch.append(Event(0, offset, mark_message(2, 0, hour * HOUR + 1)))
        batch.append(Event(0, offset + 1, mark_message(3, 0, hour * HOUR + 1)))
        offset += 2
        batches.append(batch)
    return batches


def table_view(table: Any) -> dict[bytes, Any]:
    """A table's records, and the signals still waiting in its packed keys (as a set under
    b"~"): which key holds which depends on when flushes came, a key keeps those applied
    until all of its are, and a flush packs them in a set's order."""
    progress = orjson.loads(table[progress_key(0)])["watermarks"]
    view: dict[bytes, Any] = {b"~": set()}
    for key, value in table.items():
        if not key.startswith(WAITING_PREFIX.encode()):
            view[key] = value
            continue
        for entry in orjson.loads(value)[1]:
            level, _, _, ts, *_ = entry[1]
            if ts > progress.get(str(level), ts - 1):
                view[b"~"].add(orjson.dumps(entry))
    return view


def delivered(log: Log) -> list[tuple[str, Any]]:
    return [(what, data) for what, data in log if what in {"signal delivered", "mark sent"}]


async def test_a_stage_bounded_in_memory_decides_as_one_holding_every_record(
    tmp_path: Path,
) -> None:
    everything_log: Log = []
    everything = live(everything_log)
    bounded_log: Log = []
    entities = bounded(bounded_log, tmp_path)
    held: list[tuple[int, int]] = []
    for batch in traffic():
        await everything.on_batch(batch)
        await entities.on_batch(batch)
        store = entities.stores[0]
        waiting = sum(1 for _, record in store.items() if record.pending)
        held.append((store.cached, waiting))
        assert len(store) == len(everything.stores[0])
        assert dict(store.items()) == dict(everything.stores[0].items())
    assert delivered(bounded_log) == delivered(everything_log)
    assert table_view(entities.records) == table_view(everything.records)
    assert entities.stores[0].reads > 0  # records were let go and read back
    assert all(cached <= 2 + waiting for cached, waiting in held)
    assert max(len(everything.stores[0]) for _ in held) > 2
    entities.forget({0})
    assert not list(tmp_path.iterdir())  # the indexes on disk go with the partition


async def test_a_bounded_stage_recovers_the_waiting_signals_and_only_their_records(
    tmp_path: Path,
) -> None:
    """Recovered from a table with records and signals waiting: the records with signals
    waiting are decoded (the signals must join them), the rest stay in the table until asked
    for, and the stage goes on as one that kept running."""
    kept_log: Log = []
    kept = live(kept_log)
    batches = traffic()
    for batch in batches[:3]:
        await kept.on_batch(batch)
    # Signals the next mark has not passed yet.
    late = [
        Event(0, 1000 + n, signal_message(tally(name, 3 * HOUR + 5, 9)))
        for n, name in enumerate("ab")
    ]
    await kept.on_batch(late)
    table = RecordingTable([], "record")
    table.update(kept.records)
    recovered_log: Log = []
    recovered = bounded(recovered_log, tmp_path / "r", cache=1, table=table)
    store = recovered.stage(0).store
    assert isinstance(store, EntityRecordStore)
    waiting = sum(1 for _, record in kept.stores[0].items() if record.pending)
    assert store.cached == waiting  # only the records with signals waiting, decoded
    assert waiting < len(store) == len(kept.stores[0])
    assert dict(store.items()) == dict(kept.stores[0].items())
    for batch in batches[3:]:
        await kept.on_batch(batch)
        await recovered.on_batch(batch)
    assert delivered(recovered_log) == delivered(kept_log)[-len(delivered(recovered_log)) :]
    assert dict(recovered.stores[0].items()) == dict(kept.stores[0].items())


def written_before_delivered(log: Log) -> bool:
    """Whether, before some write of a partition's progress (which closes a commit's
    records), a record was written and then something delivered: a commit's records written
    in more than one go."""
    wrote = False
    for what, data in log:
        if what == "record written":
            if data == progress_key(0):
                wrote = False
            elif not data.startswith(WAITING_PREFIX.encode()):
                wrote = True
        elif what == "signal delivered" and wrote:
            return True
    return False


async def test_a_watermark_past_more_records_than_a_chunk_delivers_and_writes_them_in_chunks(
    tmp_path: Path,
) -> None:
    """A mark that passes every tally's hour at once decides them three at a time: what each
    chunk decided is delivered and its records written before the next, the partition's
    progress only once all are; the outputs are the same."""
    everything_log: Log = []
    everything = live(everything_log)
    chunked_log: Log = []
    chunked = bounded(chunked_log, tmp_path)
    bound(chunked, fire_chunk=3)
    for batch in traffic():
        await everything.on_batch(batch)
        await chunked.on_batch(batch)
    assert delivered(chunked_log) == delivered(everything_log)
    assert table_view(chunked.records) == table_view(everything.records)
    assert written_before_delivered(chunked_log)
    assert not written_before_delivered(everything_log)


# -- stage 1 waiting for room ------------------------------------------------------------------


def marks_sent(log: Log) -> list[Any]:
    return [data for what, data in log if what == "mark sent"]


async def test_room_is_needed_past_the_bound_only_while_marks_are_on_their_way(
    tmp_path: Path,
) -> None:
    entities = bounded([], tmp_path)
    batches = traffic()
    await entities.on_batch(batches[0])
    held = entities.held
    assert held == sum(1 for _, record in entities.stores[0].items() if record.pending) > 0
    entities.outbox.add_mark(2, 0, HOUR + 1)  # stage 1's, in batch 1 (after its signals)
    bound(entities, held_max=held)
    assert not entities.room_needed()  # within the bound
    bound(entities, held_max=0)
    assert not entities.room_needed()  # no bound
    bound(entities, held_max=held - 1)
    assert entities.room_needed()
    store = entities.stores[0]
    waiting = {sig.signal_id for _, record in store.items() for sig in record.pending}
    await entities.on_batch(batches[1])  # the mark has come: it let those signals go
    still = {sig.signal_id for _, record in store.items() for sig in record.pending}
    assert waiting
    assert not waiting & still
    # Every mark sent here has arrived: only stage 1's next one lets a record go.
    assert entities.held > entities.held_max
    assert not entities.room_needed()


async def test_a_mark_of_a_level_past_this_stages_is_not_waited_for(tmp_path: Path) -> None:
    entities = bounded([], tmp_path)
    await entities.on_batch(traffic()[0])
    bound(entities, held_max=1)
    entities.outbox.add_mark(7, 0, HOUR)  # the stage has levels 2 and 3: it ignores this
    assert not entities.room_needed()


async def test_the_marks_held_for_the_next_level_can_be_sent_at_once(tmp_path: Path) -> None:
    """Held for the next write otherwise: each level's hop would wait for one."""
    log: Log = []
    entities = bounded(log, tmp_path)
    entities.write_on_commit = True
    batch = traffic()[0]
    assert orjson.loads(batch[-1].message.value)["mark"] == 3
    await entities.on_batch(batch[:-1])  # level 2's mark earns level 3's here instead
    assert not marks_sent(log)  # it waits in the outbox
    bound(entities, held_max=entities.held - 1)
    assert entities.room_needed()
    await entities.send_marks()
    assert marks_sent(log) == [{"mark": 3, "from": 0, "watermark": 1}]
    assert not any(entities.outbox.marks.values())
    assert entities.room_needed()  # sent, not arrived
