"""What the fault suites share: the replay oracle's triggers, and the check that a live run
lost none of them and sent none twice under another id."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from linkwatch.broker import free_port
from linkwatch.journeys import load_journeys
from linkwatch.replay import replay_lines
from linkwatch.settings import Settings
from linkwatch.triggers import Trigger
from tests.integration.workers import (
    WorkerProcess,
    canonical,
    read_topic,
    run,
    sum_metric,
    wait_for,
)


def expected_triggers(lines: list[bytes]) -> dict[str, bytes]:
    """trigger_id → the trigger as replay publishes it (canonical JSON)."""
    expected: dict[str, bytes] = {}

    def on_trigger(record: object) -> None:
        if isinstance(record, Trigger):
            expected[record.trigger_id] = canonical(record.model_dump(mode="json"))

    replay_lines(lines, load_journeys(), on_trigger=on_trigger, close_open=True)
    return expected


@dataclass(frozen=True)
class Delivered:
    """The triggers on the topic, against the oracle."""

    copies: Counter[str]  # trigger_id → how many times it is on the topic
    missing: set[str]
    invented: set[str]
    altered: set[str]  # ids whose copies differ from the oracle's trigger
    # What the first few missing and invented triggers were (type, journey, step, deadline).
    examples: tuple[str, ...] = ()

    @property
    def duplicates(self) -> int:
        return sum(self.copies.values()) - len(self.copies)

    def summary(self) -> str:
        return (
            f"triggers on the topic {sum(self.copies.values())}, unique {len(self.copies)}, "
            f"duplicates {self.duplicates} (same id), missing {len(self.missing)}, "
            f"invented {len(self.invented)}, altered {len(self.altered)}"
            + "".join(f"\n  {example}" for example in self.examples)
        )


def _example(kind: str, raw: bytes) -> str:
    record = orjson.loads(raw)
    fields = ("user_id", "type", "journey", "last_step", "missed_step", "deadline", "event_time")
    return f"{kind}: " + " ".join(f"{f}={record.get(f)}" for f in fields if record.get(f))


def delivered(settings: Settings, expected: dict[str, bytes]) -> Delivered:
    seen: dict[str, set[bytes]] = defaultdict(set)
    copies: Counter[str] = Counter()
    for _, value in run(read_topic(settings, settings.topic_triggers)):
        record = orjson.loads(value)
        if record["type"] == "resolution":
            continue
        copies[record["trigger_id"]] += 1
        seen[record["trigger_id"]].add(canonical(record))
    missing = set(expected) - set(copies)
    invented = set(copies) - set(expected)
    examples = [_example("missing", expected[i]) for i in sorted(missing)[:5]]
    examples += [_example("invented", min(seen[i])) for i in sorted(invented)[:5]]
    return Delivered(
        copies=copies,
        missing=missing,
        invented=invented,
        altered={i for i, versions in seen.items() if i in expected and versions != {expected[i]}},
        examples=tuple(examples),
    )


def wait_until_delivered(
    settings: Settings, expected: dict[str, bytes], worker: WorkerProcess, timeout: float
) -> Delivered:
    """Poll the triggers topic until every expected trigger is there (or time runs out)."""
    result: list[Delivered] = []

    def complete() -> bool:
        result[:] = [delivered(settings, expected)]
        return not result[0].missing

    wait_for(complete, timeout=timeout, interval=5)
    return result[0]


def handled(worker: WorkerProcess) -> float:
    """Records the worker has handled since it started (events and rejections)."""
    try:
        samples = worker.metrics()
    except OSError:
        return 0.0
    return sum_metric(samples, "linkwatch_events_total") + sum_metric(
        samples, "linkwatch_records_rejected_total"
    )


GAP_LOG_LINE = "never reached this worker"  # linkwatch.service, with linkwatch_input_gaps_total


def skipped_records(log_dir: Path) -> list[str]:
    """Every log line of the workers in `log_dir` saying input records were skipped: the
    stream went on past records it was never handed (a Faust recovery race did this)."""
    return [
        line
        for path in sorted(log_dir.glob("*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if GAP_LOG_LINE in line
    ]


async def committed_input(settings: Settings) -> int:
    """Input records the worker group has committed: a worker started now resumes after them."""
    partitions = [
        TopicPartition(topic, p)
        for topic in settings.input_topics.values()
        for p in range(settings.partitions)
    ]
    admin = AIOKafkaAdminClient(**settings.aiokafka_options())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.app_id, partitions=partitions)
    finally:
        await admin.close()
    return sum(max(0, meta.offset) for meta in offsets.values())


def kill_at_random_points(
    settings: Settings, log_dir: Path, records: int, kills: int, rng: random.Random
) -> WorkerProcess:
    """Start a worker, and `kills` times: let it handle a random number of the `records` input
    records not yet committed, kill -9 it, start another. Returns the last one, running.

    Kill points are counted in records, not seconds, so every kill lands inside the run
    however fast the worker is (timed kills once came after a fast worker had finished, and
    its successor had nothing left to do). Each worker is killed within its share of what is
    left, so the later kills still find records to interrupt."""
    worker = WorkerProcess(settings, log_dir, name="worker-0").start()
    try:
        for number in range(1, kills + 1):
            left = records - run(committed_input(settings))
            share = int(0.9 * left / (kills - number + 1))
            assert share >= 1, f"only {left} records left before kill {number}"
            # A restarted worker resumes at the committed offsets, so its count is of `left`.
            target = rng.randint(1, share)
            reached = wait_for(lambda w=worker, n=target: handled(w) >= n, 300, interval=0.05)
            assert reached, worker.tail_log()
            print(f"kill -9 number {number} at {handled(worker):.0f} of {left} records left")
            worker.kill()
            worker = WorkerProcess(settings, log_dir, name=f"worker-{number}")
            worker.start(ready_timeout=180)
    except BaseException:
        worker.kill()  # not left running into the next test
        raise
    return worker


@contextmanager
def s3_server(log_dir: Path) -> Iterator[dict[str, str]]:
    """A local S3-compatible server (moto) with a `tansu` bucket; yields the environment that
    points Tansu's s3:// storage engine at it. Data outlives the broker process, not this."""
    port = free_port()
    log = (log_dir / "moto.log").open("ab")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=log,
    )
    log.close()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "linkwatch",
        "AWS_SECRET_ACCESS_KEY": "linkwatch-test",
        "AWS_DEFAULT_REGION": "eu-west-2",
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
    }
    try:
        import boto3  # moto's own dependency

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )

        def bucket_made() -> bool:
            try:
                client.create_bucket(
                    Bucket="tansu",
                    CreateBucketConfiguration={"LocationConstraint": env["AWS_DEFAULT_REGION"]},
                )
            except Exception:  # not listening yet
                return False
            return True

        assert wait_for(bucket_made, timeout=30, interval=0.2), "moto server did not start"
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)
