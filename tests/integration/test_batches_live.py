"""Batch records on a real broker (README, "Batch records"): simulated traffic sent as NDJSON
batch records (`linkwatch.produce.Batcher`, as `produce(..., batch=N)` sends it), one of them
with bad events at its start, in its middle and at its end, and two records bad as a whole.
The worker publishes exactly what `linkwatch replay` gives for the events one a line, and
dead-letters each bad event alone, with its index, and each bad record whole."""

from __future__ import annotations

import base64
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from linkwatch.deadletters import DeadLetter
from linkwatch.journeys import load_journeys
from linkwatch.produce import NDJSON_HEADERS, Batcher, Outgoing, route
from linkwatch.replay import replay_lines
from linkwatch.settings import Settings
from linkwatch.simulate import generate
from linkwatch.triggers import Resolution, TopicRecord, Trigger
from tests.integration.workers import (
    FAST,
    START,
    WorkerProcess,
    prepare,
    read_topic,
    resolution_ids,
    run,
    sum_metric,
    trigger_ids,
    wait_for,
)

BATCH = 20  # events a batch record, at most
LIMIT = 50  # the worker's LINKWATCH_BATCH_RECORD_MAX_EVENTS here


class Plan:
    """What is sent, what replay is given, and the dead letters only a live worker writes."""

    def __init__(self, settings: Settings, lines: list[bytes]) -> None:
        batcher = Batcher(BATCH, settings.batch_record_max_bytes)
        self.sent: list[Outgoing] = [
            out for line in lines for out in batcher.add(*route(line, settings), line)
        ]
        self.sent += batcher.flush()
        self.lines = list(lines)  # replay's input: the events one a line
        self.live_only: Counter[tuple[str, bytes]] = Counter()  # (reason, raw)
        self.positions: set[tuple[str, int]] = set()  # (reason, index) of the bad events
        # Bad events at the start, in the middle and at the end of one batch record.
        n = next(i for i, out in enumerate(self.sent) if out.events >= 3)
        target = self.sent[n]
        events = target.value.split(b"\n")
        first = orjson.loads(events[0])
        broken = b'{"kind": "click", oops'
        other_user = orjson.dumps(first | {"user_id": "someone-else", "event_id": "x-other"})
        no_id = orjson.dumps({k: v for k, v in first.items() if k != "event_id"})
        value = b"\n".join([broken, events[0], other_user, *events[1:], no_id])
        self.sent[n] = target._replace(value=value, events=target.events + 3)
        self.lines += [broken, no_id]  # replay rejects them too, for the same reasons
        self.live_only[("key_mismatch", other_user)] += 1  # replay has no key to check
        self.positions |= {
            ("invalid_json", 0),
            ("key_mismatch", 2),
            ("missing_field", len(events) + 2),
        }
        # Two records bad as a whole: too many events, and a content-type no one reads.
        too_many = b"\n".join([events[0]] * (LIMIT + 1))
        csv = b"kind,event_id,user_id\nclick,x,someone"
        self.sent += [
            target._replace(value=too_many, headers=NDJSON_HEADERS, events=LIMIT + 1),
            target._replace(value=csv, headers=(("content-type", b"text/csv"),), events=1),
        ]
        self.live_only[("too_many_events", too_many)] += 1
        self.live_only[("unsupported_content_type", csv)] += 1


async def send_all(settings: Settings, sent: list[Outgoing]) -> None:
    producer = AIOKafkaProducer(**settings.aiokafka_options(), acks="all", linger_ms=5)
    await producer.start()
    try:
        pending = [
            await producer.send(out.topic, out.value, key=out.key, headers=list(out.headers))
            for out in sent
        ]
        for delivery in pending:
            await delivery
    finally:
        await producer.stop()


@pytest.mark.timeout(600)
def test_batch_records_give_what_replay_gives_for_their_events(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings.model_copy(update={**FAST, "batch_record_max_events": LIMIT})
    lines = list(generate(users=600, seed=31, start_ms=START, bad_ratio=0.01))
    plan = Plan(settings, lines)
    assert sum(out.events > 1 for out in plan.sent) >= 20, "the traffic makes batches"
    triggers: list[TopicRecord] = []
    dead: list[DeadLetter] = []
    report = replay_lines(
        plan.lines,
        load_journeys(),
        on_trigger=triggers.append,
        on_dead_letter=dead.append,
        close_open=True,
    ).report
    expected_ids = {t.trigger_id for t in triggers if isinstance(t, Trigger)}
    expected_letters = Counter((d.reason.value, d.original_bytes()) for d in dead)
    expected_letters += plan.live_only

    run(prepare(settings))
    with WorkerProcess(settings, tmp_path) as worker:
        run(send_all(settings, plan.sent))

        def all_fired() -> bool:
            return sum_metric(worker.metrics(), "linkwatch_triggers_total") >= len(expected_ids)

        assert wait_for(all_fired, timeout=240), worker.tail_log()
        time.sleep(2)  # anything extra would show up now
        metrics = worker.metrics()
        live = run(read_topic(settings, settings.topic_triggers))
        letters = [orjson.loads(v) for _, v in run(read_topic(settings, settings.topic_dlq))]
        assert worker.terminate(timeout=settings.shutdown_timeout + 5) == 0

    ids = trigger_ids(live)
    assert set(ids) == expected_ids
    assert len(ids) == len(set(ids))
    assert set(resolution_ids(live)) == {
        r.resolution_id for r in triggers if isinstance(r, Resolution)
    }
    # Every rejection once, with its own bytes: a bad event's, or a bad record's.
    assert Counter((d["reason"], base64.b64decode(d["raw"])) for d in letters) == expected_letters
    indexed = {
        (d["reason"], d["source"]["index"]) for d in letters if d["source"]["index"] is not None
    }
    assert plan.positions <= indexed
    whole = {d["reason"] for d in letters if d["source"]["index"] is None}
    assert {"too_many_events", "unsupported_content_type"} <= whole
    # Counted per event, as the report counts lines.
    assert sum_metric(metrics, "linkwatch_events_total") == report.valid
    for reason, count in Counter(reason for reason, _ in expected_letters.elements()).items():
        assert sum_metric(metrics, "linkwatch_records_rejected_total", reason=reason) == count
