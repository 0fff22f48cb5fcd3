"""The worker's adapter around the engine, without a broker: ordering of deliveries and state
writes, rejections only a live worker can make, and ticks. The table and topics are stand-ins
that record what happens, in order; the code under test is the real `LiveJourneys`."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import namedtuple
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from faust.streams import current_event
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from prometheus_client import CollectorRegistry

from linkwatch import service
from linkwatch.journeys import JourneySet
from linkwatch.live_entities import SignalOutbox
from linkwatch.logs import user_ref, user_ref_key
from linkwatch.metrics import Metrics
from linkwatch.service import (
    LiveJourneys,
    create_app,
    signal_partitioner,
    write_before_commits,
)
from linkwatch.settings import Settings
from linkwatch.state import load_state
from linkwatch.store import end_of_batch_key, progress_key
from linkwatch.ticks import TickPacer
from tests.builders import at, raw

Log = list[tuple[str, Any]]


class RecordingTable(dict[bytes, bytes]):
    def __init__(self, log: Log, name: str) -> None:
        super().__init__()
        self.log = log
        self.name = name
        # Partition of Faust's current event at each write: where Faust would write it.
        self.contexts: list[tuple[bytes, int | None]] = []

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.log.append((f"{self.name} written", key))
        event = current_event()
        self.contexts.append((key, event.message.partition if event is not None else None))
        super().__setitem__(key, value)

    def __delitem__(self, key: bytes) -> None:
        self.log.append((f"{self.name} deleted", key))
        super().__delitem__(key)


class RecordingTopic:
    """`send` returns a delivery future that completes a moment later, like a producer."""

    def __init__(self, log: Log, name: str) -> None:
        self.log = log
        self.name = name
        self.sent: list[tuple[bytes | None, bytes]] = []

    async def send(self, *, key: bytes | None, value: bytes, force: bool) -> asyncio.Future[None]:
        assert force, "outputs must not wait for the offset commit"
        self.sent.append((key, value))
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def deliver() -> None:
            self.log.append((f"{self.name} delivered", key))
            delivered.set_result(None)

        asyncio.get_running_loop().call_later(0.01, deliver)
        return delivered


class Event:
    """What the service reads of a Faust event (a plain object: Faust refers to its current
    event weakly)."""

    def __init__(self, message: Any) -> None:
        self.message = message


def message(
    topic: str,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    partition: int = 0,
    headers: list[tuple[str, bytes]] | None = None,
) -> Any:
    tp = SimpleNamespace(topic=topic, partition=partition, _replace=lambda **kw: None)
    return Event(
        SimpleNamespace(
            topic=topic,
            partition=partition,
            offset=offset,
            key=key,
            value=value,
            tp=tp,
            headers=headers or [],  # as aiokafka hands them over: (name, value) pairs
        )
    )


def make_live(journeys: JourneySet, **settings: Any) -> tuple[LiveJourneys, Log]:
    log: Log = []
    live = LiveJourneys(
        Settings(idle_timeout="1s", **settings),
        journeys,
        Metrics(CollectorRegistry()),
        RecordingTable(log, "state"),
        RecordingTable(log, "watermark"),
        RecordingTopic(log, "trigger"),
        RecordingTopic(log, "dead letter"),
    )
    return live, log


@pytest.fixture
def live(cart_journeys: JourneySet) -> tuple[LiveJourneys, Log]:
    return make_live(cart_journeys)


async def test_a_trigger_is_delivered_before_the_state_that_produced_it(
    live: tuple[LiveJourneys, Log],
) -> None:
    journeys, log = live
    dead_end = raw(event_id="a", page="cart", landing_status=404)
    await journeys.on_event(message("events.click", 0, b"u1", dead_end))
    # The partition's progress closes the states written (`commit_table`).
    assert log == [
        ("trigger delivered", b"u1"),
        ("state written", b"u1"),
        ("state written", progress_key(0)),
    ]
    assert orjson.loads(journeys.states[progress_key(0)])["closes_commit"] is True
    partition, state = load_state(journeys.states[b"u1"])
    assert partition == 0
    assert state.recent  # the dedup memory that would hide a replayed event is now durable


async def test_a_batch_delivers_every_trigger_then_writes_each_changed_state_once(
    live: tuple[LiveJourneys, Log],
) -> None:
    journeys, log = live
    batch = [
        message("events.click", 0, b"u1", raw(event_id="a", page="cart", landing_status=404)),
        message("events.click", 0, b"u2", raw(event_id="b", user_id="u2", page="landing"), 1),
        message("events.click", 1, b"u1", raw(event_id="c", ts=at(1), page="cart")),
        message("events.click", 2, b"u1", raw(event_id="d", ts=at(2), page="checkout")),
        message("events.click", 1, b"u2", raw(event_id="e", user_id="u2", page="cart"), 1),
    ]
    await journeys.on_batch(batch)
    delivered = [i for i, (what, _) in enumerate(log) if what == "trigger delivered"]
    written = [i for i, (what, _) in enumerate(log) if what == "state written"]
    assert delivered
    assert max(delivered) < min(written)
    assert sorted(key for what, key in log if what == "state written") == [
        progress_key(0),
        progress_key(1),
        b"u1",
        b"u2",
    ]
    # Each state went to its own partition: written in the context of one of its records,
    # and closed there by that partition's progress, after it.
    assert journeys.states.contexts == [
        (b"u1", 0),
        (progress_key(0), 0),
        (b"u2", 1),
        (progress_key(1), 1),
    ]
    _, state = load_state(journeys.states[b"u1"])
    assert len(state.recent) == 3  # the three records of the batch (hashed ids)


@pytest.mark.parametrize(
    ("topic", "key", "value", "reason"),
    [
        ("events.purchase", b"u1", raw(page="cart"), "topic_mismatch"),
        ("events.click", b"someone-else", raw(page="cart"), "key_mismatch"),
        ("events.click", None, raw(page="cart"), "key_mismatch"),
        ("events.click", b"u1", None, "empty"),
        ("events.click", b"u1", b'{"kind": "click"', "invalid_json"),
    ],
)
async def test_records_only_a_live_worker_can_reject_are_dead_lettered(
    live: tuple[LiveJourneys, Log], topic: str, key: bytes | None, value: bytes | None, reason: str
) -> None:
    journeys, _ = live
    await journeys.on_event(message(topic, 7, key, value))
    ((_, letter),) = journeys.dlq_topic.sent
    decoded = orjson.loads(letter)
    assert decoded["reason"] == reason
    assert decoded["source"] == {
        "type": "kafka",
        "topic": topic,
        "partition": 0,
        "offset": 7,
        "index": None,  # the whole record
    }
    assert b"u1" not in journeys.states


async def test_a_tick_fires_due_deadlines_once_the_partition_is_quiet(
    live: tuple[LiveJourneys, Log],
) -> None:
    journeys, log = live
    await journeys.on_event(
        message("events.click", 0, b"u1", raw(event_id="a", ts=at(0), page="cart"))
    )
    assert journeys.triggers_topic.sent == []
    await asyncio.sleep(1.1)  # idle_timeout: the only source falls silent
    await journeys.on_event(message("linkwatch.ticks", 0, None, b""))
    ((key, value),) = journeys.triggers_topic.sent
    assert key == b"u1"
    assert orjson.loads(value)["missed_step"] == "checkout"
    # The user is idle long past the state TTL: forgotten, but only after the delivery.
    assert log[-3:] == [
        ("trigger delivered", b"u1"),
        ("state deleted", b"u1"),
        ("state written", progress_key(0)),  # after the states, in their changelog
    ]


async def test_a_tick_read_frees_its_partition_for_the_next(
    live: tuple[LiveJourneys, Log],
) -> None:
    """The tick timer sends a partition its next tick only once the last one is read
    (`ticks.TickPacer`): reading one, not an event, is what frees the partition."""
    journeys, _ = live
    pacer = TickPacer(resend_after_ms=30_000)
    journeys.on_tick_read = pacer.read
    assert pacer.due({0, 1}, now_ms=0) == [0, 1]
    await journeys.on_event(
        message("events.click", 0, b"u1", raw(event_id="a", ts=at(0), page="cart"))
    )
    await journeys.on_batch([message("linkwatch.ticks", 0, None, b"", partition=1)])
    assert pacer.due({0, 1}, now_ms=250) == [1]


def break_processing(
    journeys: LiveJourneys, monkeypatch: pytest.MonkeyPatch, broken: Callable[[Any], bool]
) -> None:
    """Partition 0's processor raises (a bug) on the events `broken` picks; the error's text
    names the user, as a careless one would."""
    processor = journeys.processor(0, 0)
    real = processor.process

    def broken_processing(event: Any, *args: Any) -> Any:
        if broken(event):
            raise ZeroDivisionError(f"a bug about {event.user_id}")
        return real(event, *args)

    monkeypatch.setattr(processor, "process", broken_processing)


async def test_an_unexpected_error_costs_one_record_not_the_stream(
    live: tuple[LiveJourneys, Log],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    journeys, _ = live
    break_processing(journeys, monkeypatch, lambda event: event.user_id == "user-two")
    bad = raw(user_id="user-two", page="cart")
    await journeys.on_event(message("events.click", 1, b"user-two", bad))
    await journeys.on_event(message("events.click", 2, b"u1", raw(event_id="b", page="cart")))
    ((_, letter),) = journeys.dlq_topic.sent
    assert orjson.loads(letter)["reason"] == "processing_error"
    assert b"u1" in journeys.states  # the next record went through
    # The log names the place, the error's type and the user's hash: not the user.
    (line,) = [r.getMessage() for r in caplog.records if r.name == "linkwatch.service"]
    assert "events.click/0@1" in line
    assert "ZeroDivisionError" in line
    assert "broken_processing" in line  # the stack is there
    assert user_ref("user-two", user_ref_key(journeys.settings)) in line
    assert "user-two" not in line


@pytest.mark.parametrize("committed", [True, False])
async def test_after_a_restart_a_topic_read_to_its_end_is_not_mistaken_for_backlog(
    cart_journeys: JourneySet, committed: bool
) -> None:
    """A worker that takes over a partition whose click topic an earlier worker read to its
    end (highwater 1, committed offset 1) must let it fall idle and fire its deadline,
    without ever handling a click itself."""
    log: Log = []
    settings = Settings(idle_timeout="1s")

    def worker() -> LiveJourneys:
        return LiveJourneys(
            settings,
            cart_journeys,
            Metrics(CollectorRegistry()),
            before.states if "before" in locals() else RecordingTable(log, "state"),
            RecordingTable(log, "watermark"),
            RecordingTopic(log, "trigger"),
            RecordingTopic(log, "dead letter"),
        )

    tp = namedtuple("TP", "topic partition")
    tick = Event(
        SimpleNamespace(
            topic="linkwatch.ticks", partition=0, offset=0, key=None, value=b"", tp=tp("x", 0)
        )
    )
    before = worker()
    cart = raw(event_id="a", ts=at(0), page="cart")
    await before.on_event(message("events.click", 0, b"u1", cart))
    await before.on_event(tick)  # its progress is saved with the state: then it is killed
    after = worker()
    after.watermarks.update(before.watermarks)
    after.highwater = lambda tp: 1 if tp.topic == "events.click" else 0
    after.committed = (lambda tp: 1 if tp.topic == "events.click" else None) if committed else None
    await after.on_event(tick)  # loads the partition: its sources count as heard from now
    for _ in range(5):  # idle_timeout (1 s) passes, with ticks coming as they do live
        await asyncio.sleep(0.25)
        await after.on_event(tick)
    fired = [orjson.loads(value)["missed_step"] for _, value in after.triggers_topic.sent]
    # Without the committed offset the click topic looks busy for ever: nothing fires.
    assert fired == (["checkout"] if committed else [])


async def test_a_topic_not_fetched_yet_counts_as_busy_for_a_while(
    live: tuple[LiveJourneys, Log],
) -> None:
    """A restarted worker has not fetched a partition yet: its lag is unknown, and taking
    that for idle would move the watermark to the clock with records still waiting. It
    counts as busy for the grace period, and only then does the partition follow the clock."""
    journeys, _ = live
    journeys.highwater = lambda tp: None
    journeys.unknown_lag_grace_ms = 2_000
    await journeys.on_event(message("events.click", 0, b"u1", raw(event_id="a", page="cart")))
    tick = message("linkwatch.ticks", 0, None, b"")
    began = time.monotonic()
    while time.monotonic() - began < 1.6:  # past the idle timeout (1 s), within the grace
        await asyncio.sleep(0.2)
        await journeys.on_event(tick)
    assert journeys.triggers_topic.sent == []
    while time.monotonic() - began < 3.6:  # past the grace, then the idle timeout again
        await asyncio.sleep(0.2)
        await journeys.on_event(tick)
    assert [orjson.loads(v)["missed_step"] for _, v in journeys.triggers_topic.sent] == ["checkout"]


async def test_a_batch_ends_each_changelog_it_wrote_with_a_marker_after_a_flush(
    live: tuple[LiveJourneys, Log],
) -> None:
    """Tansu's end offset is its last record batch's first offset, where Faust's recovery
    stops: the batch's writes (states, then the partition's progress, in one changelog) are
    flushed, then a one-record marker ends the changelog and is flushed too (Faust may commit
    the batch's offsets next), and a recovering worker reads every write before it."""
    journeys, log = live

    async def flushed() -> None:
        log.append(("producer flushed", None))

    journeys.flush_producer = flushed
    await journeys.on_batch([message("events.click", 0, b"u1", raw(event_id="a", page="cart"))])
    marker = end_of_batch_key(0)
    assert log == [
        ("state written", b"u1"),
        ("state written", progress_key(0)),
        ("producer flushed", None),
        ("state written", marker),
        ("producer flushed", None),
    ]
    restarted = LiveJourneys(
        journeys.settings,
        journeys.journeys,
        Metrics(CollectorRegistry()),
        journeys.states,
        journeys.watermarks,
        RecordingTopic([], "trigger"),
        RecordingTopic([], "dead letter"),
    )
    assert set(restarted.processor(0, 0).store) == {"u1"}


# -- batch records ----------------------------------------------------------------------------

NDJSON = [("content-type", b"application/x-ndjson")]


def sample(live: LiveJourneys, name: str, **labels: str) -> float:
    return live.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("form", ["array", "ndjson", "ndjson without a header"])
async def test_a_batch_record_has_the_effect_of_its_events_sent_one_per_record(
    cart_journeys: JourneySet, form: str
) -> None:
    events = [
        raw(event_id="a", ts=at(0), page="cart"),
        raw(event_id="b", ts=at(1), page="product", landing_status=404),  # a dead end
        raw(event_id="c", ts=at(2), page="checkout"),
        raw(event_id="a", ts=at(2), page="cart"),  # a redelivery
        raw(event_id="d", ts=at(3), page="landing", landing_status=502),  # another
    ]
    single, _ = make_live(cart_journeys)
    await single.on_batch(
        [message("events.click", offset, b"u1", value) for offset, value in enumerate(events)]
    )
    value = b"[" + b",".join(events) + b"]" if form == "array" else b"\n".join(events)
    batched, log = make_live(cart_journeys)
    headers = NDJSON if form == "ndjson" else []
    await batched.on_batch([message("events.click", 0, b"u1", value, headers=headers)])
    assert len(single.triggers_topic.sent) == 2  # the two dead ends, not vacuous
    assert batched.triggers_topic.sent == single.triggers_topic.sent  # same ids, same bytes
    assert batched.dlq_topic.sent == []
    assert batched.states[b"u1"] == single.states[b"u1"]
    assert [what for what, key in log if key == b"u1"] == [
        "trigger delivered",
        "trigger delivered",
        "state written",  # once, after the deliveries, however many events touched it
    ]
    for name in ("linkwatch_events_total", "linkwatch_events_duplicate_total"):
        assert sample(batched, name, kind="click", channel="web") == sample(
            single, name, kind="click", channel="web"
        )


async def test_each_bad_event_of_a_batch_record_is_dead_lettered_alone_with_its_index(
    live: tuple[LiveJourneys, Log],
) -> None:
    journeys, _ = live
    lines = [
        raw(event_id="a", ts=at(0), page="cart"),
        raw(event_id="b", user_id="u2", page="cart"),  # another user's: not this key's
        b"",  # a blank line: no event, but it counts
        b'{"kind": "click", oops',
        raw(event_id="e", ts=at(1), page="checkout"),
    ]
    await journeys.on_event(message("events.click", 7, b"u1", b"\n".join(lines), 0, NDJSON))
    letters = [(key, orjson.loads(value)) for key, value in journeys.dlq_topic.sent]
    place = {"type": "kafka", "topic": "events.click", "partition": 0, "offset": 7}
    assert [(key, letter["reason"], letter["source"]) for key, letter in letters] == [
        (b"u1", "key_mismatch", {**place, "index": 1}),
        (b"u1", "invalid_json", {**place, "index": 3}),
    ]
    assert [base64.b64decode(letter["raw"]) for _, letter in letters] == [lines[1], lines[3]]
    # The good events went on: the user's state remembers both, the other user has none.
    _, state = load_state(journeys.states[b"u1"])
    assert len(state.recent) == 2
    assert b"u2" not in journeys.states
    assert sample(journeys, "linkwatch_events_total", kind="click", channel="web") == 2
    for reason in ("key_mismatch", "invalid_json"):
        assert sample(journeys, "linkwatch_records_rejected_total", reason=reason) == 1


@pytest.mark.parametrize(
    ("limit", "reason"),
    [({"batch_record_max_events": 2}, "too_many_events"), ({}, "unsupported_content_type")],
)
async def test_a_batch_record_beyond_its_bounds_is_dead_lettered_whole(
    cart_journeys: JourneySet, limit: dict[str, int], reason: str
) -> None:
    journeys, _ = make_live(cart_journeys, **limit)
    value = b"[" + b",".join(raw(event_id=e, page="cart") for e in "abc") + b"]"
    headers = [] if limit else [("content-type", b"text/csv")]
    await journeys.on_event(message("events.click", 3, b"u1", value, headers=headers))
    ((_, sent),) = journeys.dlq_topic.sent
    letter = orjson.loads(sent)
    assert letter["reason"] == reason
    assert letter["source"]["index"] is None
    assert base64.b64decode(letter["raw"]) == value
    assert b"u1" not in journeys.states
    assert sample(journeys, "linkwatch_records_rejected_total", reason=reason) == 1


async def test_an_unexpected_error_costs_one_event_of_a_batch_record(
    live: tuple[LiveJourneys, Log],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    journeys, _ = live
    break_processing(journeys, monkeypatch, lambda event: event.event_id == "b")
    lines = [
        raw(event_id=e, user_id="user-one", ts=at(i), page="cart") for i, e in enumerate("abc")
    ]
    await journeys.on_event(message("events.click", 5, b"user-one", b"\n".join(lines)))
    ((_, sent),) = journeys.dlq_topic.sent
    letter = orjson.loads(sent)
    assert (letter["reason"], letter["source"]["index"]) == ("processing_error", 1)
    assert base64.b64decode(letter["raw"]) == lines[1]
    _, state = load_state(journeys.states[b"user-one"])
    assert len(state.recent) == 2  # a and c
    (line,) = [r.getMessage() for r in caplog.records if r.name == "linkwatch.service"]
    assert "events.click/0@5 (event 1 of the batch)" in line
    assert "ZeroDivisionError" in line
    assert user_ref("user-one", user_ref_key(journeys.settings)) in line
    assert "user-one" not in line


async def test_records_that_expand_to_many_events_let_the_event_loop_run_between_them(
    live: tuple[LiveJourneys, Log], monkeypatch: pytest.MonkeyPatch
) -> None:
    """/readyz, /metrics and the timers share the event loop with the agent: a batch of
    records of many events each must not hold it for its whole length."""
    journeys, _ = live
    monkeypatch.setattr(service, "YIELD_AFTER_EVENTS", 2)
    users = [f"u{n}".encode() for n in range(3)]
    records = [
        message(
            "events.click",
            n,
            user,
            b"\n".join(raw(event_id=e, user_id=user.decode()) for e in "ab"),
        )
        for n, user in enumerate(users)
    ]
    seen: list[set[str]] = []

    async def meanwhile() -> None:  # what a web request would see when it gets its turn
        seen.append(set(journeys.processor(0, 0).store))

    task = asyncio.get_running_loop().create_task(meanwhile())
    await journeys.on_batch(records)
    await task
    # It ran while the batch was being handled: after the first record, before the last.
    assert seen == [{"u0"}]


def test_signals_go_to_the_partition_kafka_gives_a_record_keyed_by_their_entity() -> None:
    """Kafka's clients put a keyed record in toPositive(murmur2(key)) % partitions; the
    murmur2 values are those of Kafka's own tests (UtilsTest). Signals were sent keyed by
    entity before they were packed: each entity keeps the partition that holds its record."""
    kafka_murmur2 = {"21": -973932308, "foobar": -790332482, "abc": 479470107}
    partition_of = signal_partitioner(12)
    for key, hashed in kafka_murmur2.items():
        assert partition_of(key) == (hashed & 0x7FFFFFFF) % 12


class CommittingConsumer:
    """Faust's consumer as far as a commit goes: `force_commit` chooses the offsets of the
    records acked by then (`_filter_committable_offsets`), sends what is attached to them
    (`_handle_attached`), then takes its round trips (here: until `done` is set)."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.acked: list[int] = []
        self.done = asyncio.Event()

    def _filter_committable_offsets(self, tps: Any) -> dict[str, int]:
        return {"events.click/0": max(self.acked) + 1} if self.acked else {}

    async def _handle_attached(self, offsets: dict[str, int]) -> None:
        self.log.append(("attached sent", offsets))

    async def force_commit(self) -> bool:
        offsets = self._filter_committable_offsets(None)
        self.log.append(("offsets chosen", offsets))
        if offsets:
            await self._handle_attached(offsets)
        await self.done.wait()
        self.log.append(("offsets committed", offsets))
        return True


async def test_states_are_written_once_per_commit_before_the_offsets_it_commits_are_chosen(
    live: tuple[LiveJourneys, Log],
) -> None:
    journeys, log = live
    consumer = CommittingConsumer(log)
    write_before_commits(consumer, [journeys])
    for offset, page in enumerate(["product", "cart"]):  # one user, two batches
        await journeys.on_batch([message("events.click", offset, b"u1", raw(page=page))])
        consumer.acked.append(offset)
    assert ("state written", b"u1") not in log  # not at the end of each batch any more
    commit = asyncio.create_task(consumer.force_commit())
    await asyncio.sleep(0)
    # A batch that comes while the commit runs waits until its offsets are chosen ...
    later = asyncio.create_task(
        journeys.on_batch([message("events.click", 2, b"u2", raw(user_id="u2", page="cart"))])
    )
    await asyncio.sleep(0.05)
    assert log.count(("state written", b"u1")) == 1
    assert log.index(("state written", b"u1")) < log.index(
        ("offsets chosen", {"events.click/0": 2})
    )
    # ... and not for its round trips.
    assert later.done()
    assert not commit.done()
    consumer.done.set()
    assert await commit
    assert ("state written", b"u2") not in log  # the next commit's
    await consumer.force_commit()
    assert log.count(("state written", b"u2")) == 1


async def test_a_commit_writes_its_states_in_slices_while_the_agents_go_on(
    live: tuple[LiveJourneys, Log],
) -> None:
    """A commit takes the states changed by then and writes them a slice at a time; a batch
    handled meanwhile changes a user it took, which the commit writes as it was when taken,
    and the next commit as it is now. No offset is committed before the last slice."""
    journeys, log = live
    consumer = CommittingConsumer(log)
    consumer.done.set()
    write_before_commits(consumer, [journeys])
    users = 10 * service.WRITE_SLICE
    first = [
        message("events.click", n, f"u{n}".encode(), raw(user_id=f"u{n}", page="cart"))
        for n in range(users)
    ]
    await journeys.on_batch(first)
    consumer.acked.append(users - 1)
    commit = asyncio.create_task(consumer.force_commit())
    await asyncio.sleep(0)
    checkout = raw(event_id="c0", user_id="u0", page="checkout", ts=at(1))
    await journeys.on_batch([message("events.click", users, b"u0", checkout)])
    log.append(("batch handled", None))
    await commit
    written = [
        i for i, (what, key) in enumerate(log) if what == "state written" and key[:1] == b"u"
    ]
    assert len(written) == users
    assert written[0] < log.index(("batch handled", None)) < written[-1]  # between slices
    assert log.index(("offsets committed", {"events.click/0": users})) > written[-1]
    table = journeys.states
    assert len(load_state(table[b"u0"])[1].pending) == 1  # as taken: the cart only
    consumer.acked.append(users)
    await consumer.force_commit()
    assert len(load_state(table[b"u0"])[1].pending) == 2  # as now: and the checkout


async def one_record_and_a_slow_broker(
    journeys: LiveJourneys, log: Log
) -> tuple[CommittingConsumer, asyncio.Event]:
    """Commits write before they commit; one record handled and acked. The producer's flush
    waits until the event returned is set (the broker's acknowledgement)."""
    acknowledged = asyncio.Event()

    async def flush() -> None:
        log.append(("flush", None))
        await acknowledged.wait()
        log.append(("flushed", None))

    journeys.flush_producer = flush
    consumer = CommittingConsumer(log)
    consumer.done.set()
    write_before_commits(consumer, [journeys])
    await journeys.on_batch([message("events.click", 0, b"u1", raw(page="cart"))])
    consumer.acked.append(0)
    return consumer, acknowledged


async def test_a_commit_lets_the_agents_go_while_the_broker_acknowledges_its_writes(
    live: tuple[LiveJourneys, Log],
) -> None:
    """A commit holds the agents only while it writes the changed states to the table and
    chooses its offsets. Waiting for the broker to acknowledge the writes, and ending the
    changelog partitions after them, happen while batches go on, and before anything attached
    to the offsets is sent or they are committed."""
    journeys, log = live
    consumer, acknowledged = await one_record_and_a_slow_broker(journeys, log)
    commit = asyncio.create_task(consumer.force_commit())
    await asyncio.sleep(0.05)
    chosen = ("offsets chosen", {"events.click/0": 1})
    assert log.index(("state written", b"u1")) < log.index(chosen)
    assert ("flush", None) in log
    # The broker has not answered: the next batch is handled all the same.
    later = [message("events.click", 1, b"u2", raw(user_id="u2", page="cart"))]
    await asyncio.wait_for(journeys.on_batch(later), timeout=5)
    assert not commit.done()
    assert ("attached sent", {"events.click/0": 1}) not in log
    acknowledged.set()
    assert await asyncio.wait_for(commit, timeout=5)
    marker = ("state written", end_of_batch_key(0))
    committed = ("offsets committed", {"events.click/0": 1})
    assert log.index(("flushed", None)) < log.index(marker) < log.index(committed)
    assert log.index(marker) < log.index(("attached sent", {"events.click/0": 1}))
    assert ("state written", b"u2") not in log  # the next commit's


async def test_a_commit_does_not_wait_for_another_one_that_waits_for_the_broker(
    live: tuple[LiveJourneys, Log],
) -> None:
    """A rebalance commits while the timer's commit waits for the broker. The rebalance waits
    for its commit, and the timer's commit for the rebalance: neither may wait for the other.
    No offset is committed before the writes are acknowledged."""
    journeys, log = live
    consumer, acknowledged = await one_record_and_a_slow_broker(journeys, log)
    first = asyncio.create_task(consumer.force_commit())
    await asyncio.sleep(0.05)
    later = [message("events.click", 1, b"u2", raw(user_id="u2", page="cart"))]
    await asyncio.wait_for(journeys.on_batch(later), timeout=5)
    consumer.acked.append(1)
    second = asyncio.create_task(consumer.force_commit())
    await asyncio.sleep(0.05)
    assert ("state written", b"u2") in log
    assert ("offsets chosen", {"events.click/0": 2}) in log  # the second got this far
    assert not [entry for entry in log if entry[0] == "offsets committed"]
    acknowledged.set()
    assert all(await asyncio.wait_for(asyncio.gather(first, second), timeout=5))
    assert [offsets for what, offsets in log if what == "offsets committed"] == [
        {"events.click/0": 1},
        {"events.click/0": 2},
    ]


async def test_marks_wait_in_the_outbox_for_the_commit_and_go_before_the_states(
    live: tuple[LiveJourneys, Log],
) -> None:
    """Signals and marks for the entity stage are sent once per commit, not per batch or
    tick, and before the states whose progress they report are written."""
    journeys, log = live

    async def send(**message: Any) -> asyncio.Future[None]:
        log.append(("signals delivered", orjson.loads(message["value"])))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    journeys.signal_outbox = SignalOutbox(send, 1, lambda _: 0)
    consumer = CommittingConsumer(log)
    write_before_commits(consumer, [journeys])
    click = raw(event_id="a", ts=at(0), page="cart")
    await journeys.on_batch([message("events.click", 0, b"u1", click)])
    await asyncio.sleep(1.1)  # idle_timeout: the other sources fall silent, the clock moves on
    for _ in range(3):  # ticks: each has a mark to send
        await journeys.on_batch([message("linkwatch.ticks", 0, None, b"")])
    assert not [entry for entry in log if entry[0] == "signals delivered"]
    consumer.acked.append(0)
    consumer.done.set()
    await consumer.force_commit()
    ((what, record),) = [entry for entry in log if entry[0] == "signals delivered"]
    ((level, source, watermark),) = record["marks"]
    assert (level, source) == (2, 0)
    assert watermark == journeys.processors[0].watermark
    states = [i for i, (entry, _) in enumerate(log) if entry.startswith("state ")]
    assert states  # the user's deadline passed (state deleted), and the partition's progress
    assert log.index((what, record)) < states[0]


async def test_the_worker_consumer_lets_the_broker_hold_a_fetch_only_as_long_as_configured(
    tmp_path: Any,
) -> None:
    """Faust builds its worker consumer with a fixed 1,500 ms fetch wait; the worker's is the
    setting's (`LINKWATCH_FETCH_MAX_WAIT`)."""
    app = create_app(Settings(fetch_max_wait=0.25, data_dir=tmp_path)).app
    thread = SimpleNamespace(app=app, consumer=SimpleNamespace(in_transaction=False))
    consumer = AIOKafkaConsumerThread._create_worker_consumer(thread, app.transport)
    try:
        assert consumer._fetch_max_wait_ms == 250
    finally:
        await consumer.stop()


def test_the_worker_producer_lingers_as_configured(tmp_path: Any) -> None:
    """The producer gathers records for `LINKWATCH_PRODUCER_LINGER` before a request: at 0
    (Faust's default) it sends a request per few records, which costs the worker CPU per record."""
    producer = create_app(Settings(producer_linger=0.02, data_dir=tmp_path)).app.producer
    assert producer._settings_default()["linger_ms"] == 20
    assert create_app(Settings(data_dir=tmp_path)).app.producer.linger_ms == 10


async def test_a_batch_asks_for_each_silent_topics_highwater_once(
    live: tuple[LiveJourneys, Log],
) -> None:
    """Each record's watermark asks whether the silent topics have records waiting: the
    answer holds for the batch (a highwater moves only when the consumer fetches), and the
    next batch asks again."""
    journeys, _ = live
    asked: list[object] = []
    journeys.highwater = lambda tp: asked.append(tp) or 0
    await journeys.on_batch([message("events.click", 0, b"u1", raw(event_id="a", ts=at(0)))])
    await asyncio.sleep(1.1)  # idle_timeout: the other sources fall silent
    silent = len(journeys.processors[0].sources) - 1
    assert silent >= 1
    for n in range(2):
        asked.clear()
        clicks = [raw(event_id=f"b{n}{i}", ts=at(i + 1)) for i in range(5)]
        await journeys.on_batch(
            [message("events.click", 1 + i, b"u1", click) for i, click in enumerate(clicks)]
        )
        assert len(asked) == silent
