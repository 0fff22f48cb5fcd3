"""Routing records to topics, pacing, and endless demo traffic: no broker needed."""

from __future__ import annotations

import asyncio
from itertools import islice, pairwise

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkwatch.cli import main
from linkwatch.codec import Batch, decode_event, decode_message
from linkwatch.errors import RecordRejected
from linkwatch.events import MAX_RECORD_BYTES
from linkwatch.produce import (
    MAX_CATCH_UP,
    MIN_SLEEP,
    NDJSON_HEADERS,
    Batcher,
    Outgoing,
    Pacer,
    endless_traffic,
    route,
    sdk_flush_order,
)
from linkwatch.settings import INPUT_KINDS, Settings
from linkwatch.simulate import generate

START_MS = 1_732_233_600_000
SETTINGS = Settings(topic_click="c", topic_share="s", topic_purchase="p", topic_group_chat="g")


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_each_kind_goes_to_its_topic_keyed_by_user(kind: str) -> None:
    record = orjson.dumps({"kind": kind, "user_id": "u-é1", "event_id": "e1"})
    assert route(record, SETTINGS) == (SETTINGS.input_topics[kind], "u-é1".encode())


@pytest.mark.parametrize(
    "record",
    [
        b'{"kind": "click", "user_id": ',  # truncated JSON
        b'{"kind": "click", "user_id": "\xff\xfe"}',  # not UTF-8
        b'{"kind": "view", "user_id": "u1"}',  # unknown kind
        b'{"kind": "Click", "user_id": "u1"}',
        b'[{"kind": "click", "user_id": "u1"}]',  # not an object
        b"42",
        b'"click"',
        b"null",
        b'{"user_id": "u1"}',  # no kind
        b'{"kind": ["click"], "user_id": "u1"}',
        b"",
    ],
)
def test_records_without_a_known_kind_go_to_the_click_topic_unkeyed(record: bytes) -> None:
    assert route(record, SETTINGS) == ("c", None)


@pytest.mark.parametrize("user_id", [12345, None, ["u1"], {"id": "u1"}, True])
def test_a_known_kind_without_a_string_user_id_keeps_its_topic_unkeyed(user_id: object) -> None:
    record = orjson.dumps({"kind": "purchase", "user_id": user_id})
    assert route(record, SETTINGS) == ("p", None)


def test_routing_the_simulators_records_is_total_and_deterministic() -> None:
    records = list(generate(users=300, seed=5, start_ms=START_MS, bad_ratio=0.05))
    routes = [route(record, SETTINGS) for record in records]
    assert routes == [route(record, SETTINGS) for record in records]
    for record, (topic, key) in zip(records, routes, strict=True):
        try:
            event = decode_event(record)
        except RecordRejected:
            continue
        assert (topic, key) == (SETTINGS.input_topics[event.kind], event.user_id.encode())
    assert {topic for topic, _ in routes} == {"c", "s", "p", "g"}
    assert ("c", None) in routes  # the bad records


class FakeTime:
    """A clock that only moves when slept on (or when told to), recording every sleep."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def paced(rate: float, records: int, time: FakeTime) -> list[float]:
    """When each of `records` records is let through."""
    pacer = Pacer(rate, clock=time.clock, sleep=time.sleep)

    async def run() -> list[float]:
        sent = []
        for _ in range(records):
            await pacer.wait()
            sent.append(time.now)
        return sent

    return asyncio.run(run())


def test_a_slow_rate_spaces_every_record() -> None:
    time = FakeTime()
    sent = paced(10, 21, time)
    assert sent[0] == 100.0  # the first goes at once
    assert sent[-1] == pytest.approx(102.0)
    assert all(b - a == pytest.approx(0.1) for a, b in pairwise(sent))


def test_a_fast_rate_sleeps_once_per_burst_not_per_record() -> None:
    time = FakeTime()
    sent = paced(10_000, 10_001, time)
    assert sent[-1] - sent[0] == pytest.approx(1.0, abs=MIN_SLEEP)
    assert len(time.sleeps) <= 1.0 / MIN_SLEEP + 1
    assert min(time.sleeps) >= MIN_SLEEP


def test_after_a_stall_the_catch_up_burst_is_bounded() -> None:
    time = FakeTime()
    pacer = Pacer(10, clock=time.clock, sleep=time.sleep)

    async def run() -> int:
        await pacer.wait()
        time.now += 60  # the broker was slow for a minute
        burst = 0
        while not time.sleeps:
            await pacer.wait()
            burst += 1
        return burst

    burst = asyncio.run(run())
    assert burst == pytest.approx(MAX_CATCH_UP * 10 + 1, abs=1)


@pytest.mark.parametrize("rate", [0, -1.5, float("nan")])
def test_a_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        Pacer(rate)


def test_endless_traffic_follows_each_population_with_the_next_seed_in_event_time() -> None:
    def population(seed: int, start_ms: int) -> tuple[list[bytes], int]:
        records = list(
            generate(seed=seed, users=4, start_ms=start_ms, bad_ratio=0, user_prefix=f"u{seed}-")
        )
        return records, max(decode_event(record).ts for record in records)

    # The wall clock lags the event time: each population starts after the newest event before.
    first, newest = population(3, START_MS)
    second, newest = population(4, newest + 1)
    third, _ = population(5, newest + 1)
    stream = endless_traffic(
        seed=3, users=4, bad_ratio=0, start_ms=START_MS, wall_clock_ms=lambda: START_MS + 1
    )
    expected = first + second + third
    assert list(islice(stream, len(expected))) == expected
    # Each population has its own users: no open journey is shared across populations.
    users = [{decode_event(r).user_id for r in part} for part in (first, second, third)]
    assert not users[0] & users[1]
    assert not users[1] & users[2]


def test_endless_traffic_starts_at_the_wall_clock_when_that_is_later() -> None:
    later = START_MS + 30 * 86_400_000
    stream = endless_traffic(
        seed=3, users=4, bad_ratio=0, start_ms=START_MS, wall_clock_ms=lambda: later
    )
    first_count = len(list(generate(seed=3, users=4, start_ms=START_MS)))
    second = [decode_event(r) for r in islice(stream, first_count + 5)][first_count:]
    assert all(event.ts >= later for event in second)


def test_simulate_needs_a_file_or_kafka(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "--users", "3"])
    assert exit_.value.code == 2
    assert "one of the arguments --out --to-kafka is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "--out", "x.jsonl", "--to-kafka"])
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option", [["--rate", "5"], ["--forever"], ["--brokers", "h:1"], ["--batch", "10"]]
)
def test_kafka_options_need_to_kafka(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--out", "unused.jsonl", *option]) == 2
    assert "need --to-kafka" in capsys.readouterr().err


def test_a_rate_must_be_positive_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--to-kafka", "--rate", "0"]) == 2
    assert "--rate must be > 0" in capsys.readouterr().err


def test_a_batch_holds_at_least_one_event_on_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--to-kafka", "--batch", "0"]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err


# -- batch records ------------------------------------------------------------------------------


def batched(records: list[bytes], max_events: int, max_bytes: int = 1_000_000) -> list[Outgoing]:
    batcher = Batcher(max_events, max_bytes)
    out = [sent for record in records for sent in batcher.add(*route(record, SETTINGS), record)]
    return out + batcher.flush()


def click(user: str, eid: str) -> bytes:
    return orjson.dumps(
        {"kind": "click", "event_id": eid, "user_id": user, "ts": START_MS, "channel": "web"}
        | {"link_id": "l", "url": "https://x.example/", "page": "product"}
    )


def test_consecutive_records_of_one_user_on_one_topic_share_a_batch_record() -> None:
    share = orjson.dumps({"kind": "share", "user_id": "u1", "event_id": "s"})
    records = [click("u1", "a"), click("u1", "b"), click("u1", "c"), share, click("u2", "d")]
    records += [click("u1", "e"), click("u1", "f")]
    out = batched(records, max_events=2)
    assert [(o.topic, o.key, o.events, o.headers) for o in out] == [
        ("c", b"u1", 2, NDJSON_HEADERS),
        ("c", b"u1", 1, ()),  # the batch was full: c starts the next, which the share ends
        ("s", b"u1", 1, ()),  # another topic
        ("c", b"u2", 1, ()),  # another user
        ("c", b"u1", 2, NDJSON_HEADERS),
    ]
    assert out[0].value == records[0] + b"\n" + records[1]
    assert out[1].value == records[2]  # a batch of one is the record itself, no header


def test_records_that_cannot_share_a_batch_go_alone_in_their_place() -> None:
    pretty = orjson.dumps(orjson.loads(click("u1", "p")), option=orjson.OPT_INDENT_2)
    huge = orjson.dumps(orjson.loads(click("u1", "h")) | {"pad": "x" * 70_000})
    bad = b'{"kind": "click", "user_id": '
    records = [click("u1", "a"), bad, click("u1", "b"), pretty, click("u1", "c"), huge]
    records.append(click("u1", "d"))
    out = batched(records, max_events=10)
    assert [o.value for o in out] == records  # nothing grouped: each was kept apart
    assert all(o.headers == () for o in out)


def test_a_batch_record_stays_under_its_byte_limit() -> None:
    records = [click("u1", f"e{i}") for i in range(10)]
    limit = 3 * len(records[0]) + 2  # three lines and their two newlines
    out = batched(records, max_events=100, max_bytes=limit)
    assert [o.events for o in out] == [3, 3, 3, 1]
    assert max(len(o.value) for o in out) == limit


def test_a_batch_holds_at_least_one_event() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Batcher(0, 1_000_000)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=MAX_RECORD_BYTES, max_value=200_000),
    st.integers(min_value=0, max_value=2**16),
)
def test_the_worker_reads_batched_traffic_as_the_same_events_in_the_same_order(
    max_events: int, max_bytes: int, seed: int
) -> None:
    """What the worker decodes from the batch records (`decode_message`, with each record's
    topic, key and headers) is, topic by topic, what it decodes from the records sent alone:
    the same events and the same rejections, in the same order."""
    records = list(generate(users=30, seed=seed, start_ms=START_MS, bad_ratio=0.05))
    kinds = {topic: kind for kind, topic in SETTINGS.input_topics.items()}

    def decoded(outgoing: list[Outgoing]) -> dict[str, list[object]]:
        by_topic: dict[str, list[object]] = {}
        for out in outgoing:
            seen = by_topic.setdefault(out.topic, [])
            try:
                value = decode_message(
                    out.value, headers=out.headers, topic_kind=kinds[out.topic], key=out.key
                )
            except RecordRejected as rejection:
                seen.append(rejection.reason)
                continue
            if isinstance(value, Batch):
                assert len(value.items) == out.events
                seen.extend(
                    i.reason if isinstance(i, RecordRejected) else i for _, i in value.items
                )
            else:
                seen.append(value)
        return by_topic

    out = batched(records, max_events, max_bytes)
    assert sum(o.events for o in out) == len(records)
    assert all(len(o.value) <= max_bytes and o.events <= max_events for o in out)
    assert decoded(out) == decoded(batched(records, max_events=1))


# -- reordering interleaved users as SDKs would send them -----------------------------------


def timed(user: str, eid: str, ts: int, kind: str = "click") -> bytes:
    return orjson.dumps(orjson.loads(click(user, eid)) | {"ts": ts, "kind": kind})


def flushed(records: list[bytes], max_events: int, after_ms: int) -> list[bytes]:
    return list(sdk_flush_order(records, SETTINGS, max_events, after_ms))


def test_interleaved_users_go_out_one_flush_each_as_batch_records() -> None:
    records = [timed(user, f"{user}{i}", START_MS + i) for i in range(4) for user in "abc"]
    assert len(batched(records, max_events=10)) == 12  # as given: nothing shares a record
    out = flushed(records, max_events=10, after_ms=60_000)
    assert [orjson.loads(r)["event_id"] for r in out] == [
        *(f"a{i}" for i in range(4)),
        *(f"b{i}" for i in range(4)),
        *(f"c{i}" for i in range(4)),
    ]
    assert [(o.key, o.events) for o in batched(out, max_events=10)] == [
        (b"a", 4),
        (b"b", 4),
        (b"c", 4),
    ]


def test_a_full_buffer_goes_at_once_and_a_stale_one_when_time_moves_past_it() -> None:
    records = [
        timed("a", "a0", START_MS),
        timed("b", "b0", START_MS),
        timed("a", "a1", START_MS + 1),  # a is full (2): out now
        timed("a", "a2", START_MS + 1),  # a new buffer
        timed("b", "b1", START_MS + 5_000),
        timed("c", "c0", START_MS + 10_001),  # more than 10 s after b0: b goes, not a2
    ]
    out = flushed(records, max_events=2, after_ms=10_000)
    assert [orjson.loads(r)["event_id"] for r in out] == ["a0", "a1", "b0", "b1", "a2", "c0"]


def test_kinds_of_one_user_wait_apart_and_records_without_user_or_time_stay_in_place() -> None:
    bad = b'{"kind": "click", "user_id": '
    no_time = orjson.dumps({"kind": "click", "user_id": "a", "event_id": "n"})
    records = [timed("a", "a0", START_MS), bad, timed("a", "s0", START_MS, "share")]
    records += [no_time, timed("a", "a1", START_MS + 1)]
    out = flushed(records, max_events=10, after_ms=60_000)
    assert out[:2] == [bad, no_time]  # passed through at once, in order
    assert [orjson.loads(r)["event_id"] for r in out[2:]] == ["a0", "a1", "s0"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcde"), st.sampled_from(INPUT_KINDS), st.integers(0, 5_000)),
        max_size=80,
    ),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=0, max_value=3_000),
)
def test_reordered_records_keep_each_users_order_and_fall_behind_by_at_most_the_window(
    steps: list[tuple[str, str, int]], max_events: int, after_ms: int
) -> None:
    """Every record goes out once; one user's records of one kind keep their order; and no
    record is more than the window behind the newest event time sent before it (so an allowed
    lateness above the window keeps every event on time)."""
    ts, records = START_MS, []
    for n, (user, kind, gap) in enumerate(steps):
        ts += gap
        records.append(timed(user, f"e{n}", ts, kind))
    out = flushed(records, max_events, after_ms)
    assert sorted(out) == sorted(records)
    for route_of in {route(r, SETTINGS) for r in records}:
        assert [r for r in out if route(r, SETTINGS) == route_of] == [
            r for r in records if route(r, SETTINGS) == route_of
        ]
    newest = None
    for record in out:
        event_ms = orjson.loads(record)["ts"]
        if newest is not None:
            assert event_ms >= newest - after_ms
        newest = event_ms if newest is None else max(newest, event_ms)


def test_a_flush_needs_one_event_and_a_window_of_zero_or_more() -> None:
    with pytest.raises(ValueError, match="max_events"):
        flushed([], max_events=0, after_ms=1)
    with pytest.raises(ValueError, match="max_events"):
        flushed([], max_events=1, after_ms=-1)
