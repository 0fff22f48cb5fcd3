"""The entity stage's live adapter, without a broker: a batch of signals and marks is handled
in order, its outputs are delivered before any record it changed is written, each record is
written once per batch (in its partition's event context), and the next level's mark is sent
last. The tables and topics are stand-ins that record what happens, in order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson

from linkwatch.entities import EntityStage
from linkwatch.live_entities import LiveEntities, mark_message, signal_message
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
    records = [i for i, (what, _) in enumerate(log) if what == "record written"]
    assert len(records) == 1  # five signals and a wake: one write
    assert isinstance(entities.records, RecordingTable)
    ((key, partition),) = entities.records.contexts
    assert key.endswith(b"tally:a")
    assert partition == 0  # in the event context of one of the batch's records
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
    assert [key for what, key in log if what == "record written"] == [b"2|tally:b"]
