"""Running real workers (`python -m linkwatch.worker`) and reading topics, for the tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from linkwatch.broker import free_port, process_cpu_seconds
from linkwatch.settings import Settings
from linkwatch.topics import ensure_topics

START = 1_732_233_600_000  # 2024-11-22: historic, so idle advancement closes everything
# Short timers, so tests end soon after their input does.
FAST = {"idle_timeout": "2s", "tick_interval": "200ms", "commit_interval": 0.5}


def canonical(record: Any) -> bytes:
    """One byte string per JSON value, whatever the key order."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


async def prepare(settings: Settings) -> None:
    """The input, ticks, triggers and dead-letter topics, with the configured partitions."""
    names = [
        *settings.input_topics.values(),
        settings.topic_ticks,
        settings.topic_triggers,
        settings.topic_dlq,
    ]
    await ensure_topics(settings, names, settings.partitions)


class WorkerProcess:
    """One `linkwatch worker` process; its log goes to a file the failure message names."""

    def __init__(self, settings: Settings, log_dir: Path, name: str = "worker") -> None:
        update = {"web_port": free_port(), "log_format": "text"}
        self.settings = settings.model_copy(update=update)
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def start(self, ready_timeout: float = 90.0) -> Self:
        env = os.environ | self.settings.to_env()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "linkwatch.worker"], env=env, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.tail_log()}")
            if self.get("/readyz", quiet=True) == 200:
                return self
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {ready_timeout} s:\n{self.tail_log()}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_mb(self) -> float:
        """Resident memory of the worker process now, in MiB (0 once it is gone)."""
        assert self.process is not None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0.0
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        return kib / 1024

    def cpu_seconds(self) -> float:
        """User + system CPU time the worker process has used so far (0 once it is gone)."""
        assert self.process is not None
        return process_cpu_seconds(self.process.pid) or 0.0

    def get(self, path: str, quiet: bool = False) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:  # noqa: S310
                return int(response.status)
        except OSError as exc:
            if quiet:
                return getattr(exc, "code", 0) or 0
            raise

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:  # noqa: S310
            text = response.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
        return samples

    def metrics_value(self, name: str, **labels: str) -> float:
        """One metric summed over its samples (with these labels); 0 when nothing answers."""
        try:
            return sum_metric(self.metrics(), name, **labels)
        except OSError:
            return 0.0

    def terminate(self, timeout: float) -> int:
        """SIGTERM; the exit code (raises if it takes longer than `timeout`)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def tail_log(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


def sum_metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and wanted <= set(sample_labels)
    )


async def read_topic(settings: Settings, topic: str) -> list[Any]:
    """Every record now in `topic` (no consumer group), as (key, value) pairs."""
    return [(m.key, m.value) for m in await read_messages(settings, topic)]


async def read_messages(settings: Settings, topic: str) -> list[Any]:
    """Every record now in `topic` (no consumer group), as aiokafka hands it over (partition,
    offset, key, value...), in each partition's order."""
    consumer = AIOKafkaConsumer(**settings.aiokafka_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            return []
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # End offsets are unreliable on Tansu: read until quiet. But not before the end
        # offsets reported now are reached, or up to a minute: a slow broker (Tansu on the
        # outage test's S3 server) may answer the first fetches later than three quiet polls.
        ends = await consumer.end_offsets(tps)
        give_up_at = time.monotonic() + 60
        records: list[Any] = []
        quiet_polls = 0
        while quiet_polls < 3 or (
            time.monotonic() < give_up_at
            and any([await consumer.position(tp) < end for tp, end in ends.items()])
        ):
            batch = await consumer.getmany(timeout_ms=300, max_records=10_000)
            quiet_polls = 0 if batch else quiet_polls + 1
            for messages in batch.values():
                records.extend(messages)
        return records
    finally:
        await consumer.stop()


async def send_raw(
    settings: Settings,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    partition: int | None = None,
) -> int:
    """Send one record as it is (to `partition`, or where its key goes); its offset."""
    producer = AIOKafkaProducer(**settings.aiokafka_options(), acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, value, key=key, partition=partition)
        return int(sent.offset)
    finally:
        await producer.stop()


def trigger_ids(records: list[Any]) -> list[str]:
    """Ids of the triggers on a triggers topic (not of the resolutions beside them)."""
    decoded = [orjson.loads(value) for _, value in records]
    return [r["trigger_id"] for r in decoded if r["type"] != "resolution"]


def resolution_ids(records: list[Any]) -> list[str]:
    decoded = [orjson.loads(value) for _, value in records]
    return [r["resolution_id"] for r in decoded if r["type"] == "resolution"]


def wait_for(predicate: Any, timeout: float, interval: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)
