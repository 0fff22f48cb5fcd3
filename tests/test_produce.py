"""Routing records to topics, pacing, and endless demo traffic: no broker needed."""

from __future__ import annotations

import asyncio
from itertools import islice, pairwise

import orjson
import pytest

from linkwatch.cli import main
from linkwatch.codec import decode_event
from linkwatch.errors import RecordRejected
from linkwatch.produce import MAX_CATCH_UP, MIN_SLEEP, Pacer, endless_traffic, route
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


@pytest.mark.parametrize("option", [["--rate", "5"], ["--forever"], ["--brokers", "h:1"]])
def test_kafka_options_need_to_kafka(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--out", "unused.jsonl", *option]) == 2
    assert "need --to-kafka" in capsys.readouterr().err


def test_a_rate_must_be_positive_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--to-kafka", "--rate", "0"]) == 2
    assert "--rate must be > 0" in capsys.readouterr().err
