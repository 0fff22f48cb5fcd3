"""The embedded Tansu broker, topic creation, and producing / tailing records through it."""

from __future__ import annotations

import asyncio
import io
import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from linkwatch.broker import BrokerError, EmbeddedBroker
from linkwatch.cli import main
from linkwatch.errors import ConfigError
from linkwatch.produce import produce, route
from linkwatch.settings import Settings
from linkwatch.simulate import generate
from linkwatch.tail import tail
from linkwatch.topics import TopicError, ensure_topics, partition_counts

START_MS = 1_732_233_600_000

Line = tuple[str, str, str]  # topic, key, value as `tail` prints them


def parse(topic: str, output: str) -> list[tuple[str, int, int, str, str]]:
    """(topic, partition, offset, key, value) per line `tail` printed."""
    rows = []
    for line in output.splitlines():
        partition, offset, key, value = line.split(" ", 3)
        rows.append((topic, int(partition), int(offset), key, value))
    return rows


def expected_line(record: bytes, settings: Settings) -> Line:
    topic, key = route(record, settings)
    as_text = record.decode("utf-8", "backslashreplace")
    return topic, "-" if key is None else key.decode(), as_text


async def tail_all(settings: Settings, topics: list[str], timeout: float) -> list[str]:
    """What `tail` prints for each topic, read side by side."""
    outputs = [io.StringIO() for _ in topics]
    await asyncio.gather(
        *(tail(settings, t, timeout=timeout, out=o) for t, o in zip(topics, outputs, strict=True))
    )
    return [out.getvalue() for out in outputs]


async def test_broker_serves_kafka_requests(broker: EmbeddedBroker) -> None:
    assert broker.running
    assert broker.url == f"kafka://127.0.0.1:{broker.port}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    assert cluster["cluster_id"] == broker.cluster_id
    assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [("127.0.0.1", broker.port)]


async def test_ensure_topics_creates_missing_and_reports_existing(kafka_settings: Settings) -> None:
    inputs = list(kafka_settings.input_topics.values())
    assert await ensure_topics(kafka_settings, inputs, 3) == dict.fromkeys(inputs, 3)
    # Existing topics keep their count, so a caller can see that they disagree.
    extra = f"{kafka_settings.topic_click}.extra"
    counts = await ensure_topics(kafka_settings, [inputs[0], extra, inputs[0]], 5)
    assert counts == {inputs[0]: 3, extra: 5}
    # Reading counts creates nothing.
    missing = f"{kafka_settings.topic_click}.missing"
    assert await partition_counts(kafka_settings, [missing, extra]) == {extra: 5}
    assert await partition_counts(kafka_settings, [missing]) == {}


async def test_ensure_topics_refuses_what_kafka_refuses(kafka_settings: Settings) -> None:
    with pytest.raises(ValueError, match="partitions"):
        await ensure_topics(kafka_settings, ["fine"], 0)
    with pytest.raises(ConfigError, match="invalid topic name 'a b'"):
        await ensure_topics(kafka_settings, ["a b"], 1)


async def test_produce_then_tail_accounts_for_every_record(kafka_settings: Settings) -> None:
    records = list(generate(users=80, seed=11, start_ms=START_MS))
    inputs = list(kafka_settings.input_topics.values())
    await ensure_topics(kafka_settings, inputs, 3)
    progress: list[int] = []
    assert await produce(kafka_settings, records, on_sent=progress.append) == len(records)
    assert progress == list(range(1, len(records) + 1))

    outputs = await tail_all(kafka_settings, inputs, timeout=1.0)
    rows = [row for topic, out in zip(inputs, outputs, strict=True) for row in parse(topic, out)]
    assert len(rows) == len(records)
    # Same bytes, each on the topic and with the key `route` chose: every kind is there, and the
    # bad records (no key) went to the click topic.
    got = Counter((topic, key, value) for topic, _, _, key, value in rows)
    assert got == Counter(expected_line(record, kafka_settings) for record in records)
    assert {topic for topic, *_ in rows} == set(inputs)
    assert {topic for topic, _, _, key, _ in rows if key == "-"} == {kafka_settings.topic_click}
    # Keyed by user: each user's records of a kind share one partition.
    partitions: dict[tuple[str, str], set[int]] = {}
    for topic, partition, _, key, _ in rows:
        if key != "-":
            partitions.setdefault((topic, key), set()).add(partition)
    assert all(len(used) == 1 for used in partitions.values())


async def test_produce_paces_and_accepts_an_async_iterable(kafka_settings: Settings) -> None:
    records = list(generate(users=10, seed=2, start_ms=START_MS))[:20]

    async def stream() -> AsyncIterator[bytes]:
        for record in records:
            yield record

    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await produce(kafka_settings, stream(), rate=200) == 20
    assert loop.time() - started >= 19 / 200 * 0.9


async def test_tail_from_end_prints_only_what_arrives_after_it_starts(
    kafka_settings: Settings,
) -> None:
    topic = kafka_settings.topic_click
    await ensure_topics(kafka_settings, [topic], 1)
    old = [b'{"kind":"click","user_id":"u1","n":%d}' % n for n in range(30)]
    new = [b'{"kind":"click","user_id":"u2","n":%d}' % n for n in range(5)]
    await produce(kafka_settings, old)  # one batch: Tansu's ListOffsets points into it
    out = io.StringIO()
    tailing = asyncio.create_task(
        tail(kafka_settings, topic, from_beginning=False, limit=len(new), timeout=10, out=out)
    )
    await asyncio.sleep(1.0)
    await produce(kafka_settings, new)
    assert await tailing == len(new)
    assert [value for *_, value in parse(topic, out.getvalue())] == [r.decode() for r in new]


async def test_tail_of_a_missing_topic_fails_and_creates_nothing(kafka_settings: Settings) -> None:
    with pytest.raises(TopicError, match="no topic"):
        await tail(kafka_settings, kafka_settings.topic_dlq, timeout=0.1, out=io.StringIO())
    assert await partition_counts(kafka_settings, [kafka_settings.topic_dlq]) == {}


async def test_stop_and_start_again_on_the_same_port_with_nothing_kept(tmp_path: Path) -> None:
    async with EmbeddedBroker(log_dir=tmp_path) as own:
        settings = Settings(brokers=own.url)
        await ensure_topics(settings, ["kept"], 2)
        port = own.port
        own.stop()
        own.stop()  # idempotent
        assert not own.running
        own.start()  # from inside a running loop, too
        assert own.running
        assert own.port == port
        # The memory engine keeps nothing across a restart.
        assert await partition_counts(settings, ["kept"]) == {}
    assert not own.running
    assert "ready in" in (tmp_path / "tansu.log").read_text()


def test_a_port_in_use_is_a_broker_error_naming_the_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()  # accepts TCP, answers no Kafka request
        broker = EmbeddedBroker(port=taken.getsockname()[1], log_dir=tmp_path)
        with pytest.raises(BrokerError, match="exited") as failure:
            broker.start()
    assert str(broker.log_path) in str(failure.value)
    assert "Address in use" in broker.log_path.read_text()
    assert not broker.running


def test_a_missing_binary_is_a_broker_error_naming_the_log(tmp_path: Path) -> None:
    broker = EmbeddedBroker(binary=tmp_path / "no-such-tansu", log_dir=tmp_path)
    with pytest.raises(BrokerError, match="cannot run") as failure:
        broker.start()
    assert str(broker.log_path) in str(failure.value)
    assert not broker.running


def test_extra_arguments_and_environment_reach_tansu(tmp_path: Path) -> None:
    """Passed through as given: Tansu reads STORAGE_ENGINE from its environment, and a
    command-line option wins over it."""
    from_env = EmbeddedBroker(env={"STORAGE_ENGINE": "memory://from-env/"}, log_dir=tmp_path / "a")
    with from_env:
        assert from_env.running
    assert "storage: memory://from-env/" in from_env.log_path.read_text()
    both = EmbeddedBroker(
        extra_args=["--storage-engine", "memory://from-args/"],
        env={"STORAGE_ENGINE": "memory://from-env/"},
        log_dir=tmp_path / "b",
    )
    with both:
        assert both.running
    assert "storage: memory://from-args/" in both.log_path.read_text()


def test_cli_simulates_to_kafka_and_tails(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = kafka_settings.input_topics
    for kind, topic in topics.items():
        monkeypatch.setenv(f"LINKWATCH_TOPIC_{kind.upper()}", topic)
    monkeypatch.setenv("LINKWATCH_PARTITIONS", "2")
    brokers = ["--brokers", kafka_settings.brokers]
    args = ["simulate", "--to-kafka", *brokers, "--users", "20", "--start", str(START_MS)]
    assert main(args) == 0
    sent = len(list(generate(users=20, start_ms=START_MS)))
    assert f"produced {sent:,} records" in capsys.readouterr().err
    printed = 0
    for topic in topics.values():
        assert main(["tail", topic, *brokers, "--timeout", "0.5"]) == 0
        printed += len(capsys.readouterr().out.splitlines())
    assert printed == sent
    assert main(["tail", topics["click"], *brokers, "--limit", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["tail", "no.such.topic", *brokers, "--timeout", "0.1"]) == 1
    assert "no topic 'no.such.topic'" in capsys.readouterr().err
