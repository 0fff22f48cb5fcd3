"""The entity stage's live adapter, without a broker: a batch of signals and marks is handled
in order, its outputs are delivered before any record it changed is written, each record is
written once per batch (in its partition's event context), and the next level's mark is sent
last. The tables and topics are stand-ins that record what happens, in order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson

from linkwatch.entities import EntityRecord, EntityStage, Offered, dump_record
from linkwatch.live_entities import (
    WAITING_PREFIX,
    LiveEntities,
    mark_message,
    signal_message,
)
from linkwatch.store import progress_key
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
        what = "mark sent" if isinstance(data, dict) else "signal delivered"
        log.append((what, data))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    return send


def live(log: Log) -> LiveEntities:
    return LiveEntities(
        new_stage=lambda store: EntityStage([TallyLogic(), TotalLogic()], store, levels=(2, 3)),
        partitions=1,
        records=RecordingTable(log, "record"),
        progress=RecordingTable(log, "progress"),
        send_signal=recording_send(log),
        send_health=recording_send(log),
        send_profile=recording_send(log),
        on_measures=lambda measures: log.append(("measures", len(measures))),
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
    assert delivered < records[0]
    assert log[-1] == ("mark sent", {"mark": 3, "from": 0, "watermark": HOUR + 1})
    assert ("measures", 1) in log


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


async def test_a_busy_entity_costs_each_waiting_signal_its_own_bytes_once() -> None:
    """Signals wait for the watermark: each is written once under its own key, the record's
    state only when it changes, and once applied the signals' keys are deleted."""
    log: Log = []
    entities = live(log)
    for batch in range(10):
        hits = [signal_message(tally("a", 10 + 10 * batch + n, n)) for n in range(10)]
        await entities.on_batch([Event(0, 10 * batch + n, v) for n, v in enumerate(hits)])
    record = b"2|tally:a"
    waiting = [key for key in entities.records if key.startswith(WAITING_PREFIX.encode())]
    assert len(waiting) == 100
    assert all(writes_of(log, key) == 1 for key in waiting)
    assert writes_of(log, record) == 1  # its state did not change while signals waited
    await entities.on_batch([Event(0, 100, mark_message(2, 0, HOUR + 1))])
    assert not [key for key in entities.records if key.startswith(WAITING_PREFIX.encode())]
    assert writes_of(log, record) == 2  # the hour closed: a new state


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
    waiting = [key for key in recovered.records if key.startswith(WAITING_PREFIX.encode())]
    assert len(waiting) == 3
    assert orjson.loads(recovered.records[b"2|tally:c"]) == [0, [None, []]]
    again = live([])
    again.records.update(recovered.records)
    assert len(again.stage(0).store["2|tally:c"].pending) == 3
