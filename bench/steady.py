"""The live worker at a steady input rate: what one event costs it, and where that time goes.

    .venv/bin/python bench/steady.py [--rate 500] [--seconds 60] [--warmup 15] [--no-profile]

An embedded Tansu broker, one `python -m linkwatch.worker` (the tests' short timers: ticks
every 200 ms, idle timeout 2 s) and the 15-minute soak's traffic (endless simulated
populations of 1,000 users, 30 days of event time apart) produced at `--rate` records/s.
After `--warmup` seconds, py-spy samples the worker for the rest of the run, and the worker's
CPU and handled records are measured over the same window.

Prints records handled per second, the worker's CPU (share of one core) and CPU ms per record,
the lag at the end, the records the worker produced per input record, by topic (read back
from the broker), and the py-spy samples by stage: the part of the worker a stack is in,
found from its frames (see `STAGES`). A steady rate is where per-batch costs show: at a
backlog, batches are full and those costs are shared by up to `batch_max` records.
Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from linkwatch.broker import EmbeddedBroker
from linkwatch.produce import endless_traffic, produce
from linkwatch.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' worker harness
from tests.integration.workers import FAST, WorkerProcess, prepare, sum_metric  # noqa: E402

SOAK_START = 946_771_200_000  # 2000-01-02, as the soak
DAY_MS = 86_400_000

# (stage, frames that put a stack in it): the first stage with a frame in the stack wins, so
# the inner parts of an agent come before the agent itself.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("journeys: engine", ("PartitionProcessor.process", "PartitionProcessor.on_tick")),
    ("journeys: decode", ("decode_message",)),
    ("journeys: triggers out", ("LiveJourneys._publish",)),
    ("journeys: signals out", ("send_signals (linkwatch/live_entities", "send_marks")),
    ("journeys: state writes", ("PartitionStore.flush", "WriteBackStore.flush", "_save_progress")),
    ("entities: apply", ("EntityStage.", "LiveEntities._on_mark")),
    ("entities: outputs out", ("LiveEntities._deliver",)),
    ("entities: state writes", ("EntityRecordStore.flush", "LiveEntities._save")),
    ("end of batch (flush, markers)", ("end_batch",)),
    ("journeys agent: other", ("journeys_agent",)),
    ("entities agent: other", ("entities_agent",)),
    ("producer (background)", ("ProducerBuffer", "Sender.", "aiokafka/producer")),
    ("consumer: fetch, Faust delivery", ("Fetcher.", "_drain_messages", "Conductor.")),
    ("consumer: stream, acks", ("_passive_drainer", "Stream.")),
    ("offset commits", ("Consumer.commit", "_commit")),
    ("timers, web, metrics", ("Timer", "aiohttp", "prometheus_client", "send_ticks")),
    ("event loop (asyncio's)", ("select (selectors", "_run_once")),
]


def stage_of(stack: str) -> str:
    if stack.rpartition(";")[2].startswith("Worker.execute_from_commandline"):
        return "event loop (uvloop's, in C)"  # nothing in Python runs: idle, or I/O
    for stage, frames in STAGES:
        if any(frame in stack for frame in frames):
            return stage
    return "other"


def summarize(raw_profile: Path) -> Counter[str]:
    """py-spy's raw output (one `frame;frame;... count` line per distinct stack) by stage."""
    samples: Counter[str] = Counter()
    for line in raw_profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples[stage_of(stack)] += int(count)
    return samples


async def records_in(settings: Settings, topic: str, until_ms: int) -> int:
    """How many records `topic` held at `until_ms` (read to the end: Tansu's end offsets are
    unreliable). The worker still runs meanwhile and its ticks keep sending marks, so a
    partition is done at its first record produced after `until_ms`, or once it is quiet.
    A consumer of its own: once assigned, a consumer's metadata covers only what it holds."""
    consumer = AIOKafkaConsumer(**settings.aiokafka_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        count = 0
        if tps:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            quiet = 0
            while quiet < 3 and tps:
                batch = await consumer.getmany(*tps, timeout_ms=300, max_records=50_000)
                quiet = 0 if batch else quiet + 1
                for tp, messages in batch.items():
                    before = [m for m in messages if m.timestamp <= until_ms]
                    count += len(before)
                    if len(before) < len(messages):
                        tps.remove(tp)
        return count
    finally:
        await consumer.stop()


def handled(worker: WorkerProcess) -> float:
    metrics = worker.metrics()
    return sum_metric(metrics, "linkwatch_events_total") + sum_metric(
        metrics, "linkwatch_records_rejected_total"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="input records per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--no-profile", action="store_true", help="measure without py-spy")
    parser.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--timers",
        choices=["fast", "default"],
        default="fast",
        help="the tests' short timers (ticks 200 ms, commits 0.5 s, idle 2 s) or the defaults",
    )
    parser.add_argument(
        "--no-outputs", action="store_true", help="skip counting what the worker produced"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lw-bench-steady-"))
    starts = itertools.count(SOAK_START, 30 * DAY_MS)
    traffic = endless_traffic(
        seed=100, users=1000, bad_ratio=0.001, wall_clock_ms=lambda: next(starts)
    )
    total = int(args.rate * args.seconds)
    with EmbeddedBroker(log_dir=work) as broker:
        settings = Settings(brokers=broker.url).namespaced("steady", data_dir=work / "state")
        timers = FAST if args.timers == "fast" else {}
        settings = settings.model_copy(update=timers | {"event_loop": args.event_loop})
        asyncio.run(prepare(settings))
        with WorkerProcess(settings, work) as worker:
            assert worker.process is not None
            sent = [0]

            def send() -> None:
                def count(n: int) -> None:
                    sent[0] = n

                records = itertools.islice(traffic, total)
                asyncio.run(produce(settings, records, rate=args.rate, on_sent=count))

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            time.sleep(args.warmup)
            window = max(5, int(args.seconds - args.warmup - 2))
            raw_profile = work / "py-spy.txt"
            cpu0, handled0, t0 = worker.cpu_seconds(), handled(worker), time.monotonic()
            if args.no_profile:
                time.sleep(window)
            else:
                # Non-blocking: pausing the worker 50 times a second to sample it cost it more
                # CPU than its work at low rates, and halved the rate it could sustain.
                spy = [ROOT / ".venv/bin/py-spy", "record", "--nonblocking"]
                spy += ["-p", str(worker.process.pid)]
                spy += ["-d", str(window), "-r", "50", "-f", "raw", "-o", str(raw_profile)]
                subprocess.run(spy, check=True, capture_output=True)  # noqa: S603 (our own py-spy)
            cpu1, handled1, t1 = worker.cpu_seconds(), handled(worker), time.monotonic()
            lag = sent[0] - handled1
            sender.join()
            deadline = time.monotonic() + (10 if args.no_outputs else 300)
            while handled(worker) < total and time.monotonic() < deadline:
                time.sleep(0.5)
            caught_up = handled(worker)
            produced: dict[str, int] = {}
            if not args.no_outputs:
                time.sleep(3)  # the last batch's outputs
                topics = [
                    settings.topic_triggers,
                    settings.topic_dlq,
                    settings.topic_signals,
                    settings.topic_health,
                    settings.topic_profiles,
                    f"{settings.app_id}-states-changelog",
                    f"{settings.app_id}-entities-changelog",
                ]
                until_ms = int(time.time() * 1000)
                produced = {
                    topic: asyncio.run(records_in(settings, topic, until_ms)) for topic in topics
                }
    rate = (handled1 - handled0) / (t1 - t0)
    cpu = (cpu1 - cpu0) / (t1 - t0)
    print(
        f"input {args.rate:.0f} records/s for {args.seconds:.0f} s ({total:,} records); "
        f"{args.event_loop} event loop, {args.timers} timers"
    )
    print(
        f"over {t1 - t0:.0f} s after {args.warmup:.0f} s of warm-up: handled {rate:.0f}/s, "
        f"worker CPU {cpu:.0%}, {cpu * 1000 / max(rate, 1e-9):.2f} CPU ms per record, "
        f"lag at the end of the window {lag:.0f}"
        + ("" if args.no_profile else " (py-spy sampling: figures include its overhead)")
    )
    print(f"records handled in the end: {caught_up:,.0f} of {total:,}")
    if produced:
        print("\nrecords the worker produced, per input record:")
        for topic, count in produced.items():
            print(f"  {topic:<40}{count:>9,} {count / total:>7.2f}")
        print(f"  {'all':<40}{sum(produced.values()):>9,} {sum(produced.values()) / total:>7.2f}")
    if not args.no_profile:
        samples = summarize(raw_profile)
        whole = sum(samples.values())
        print(f"\npy-spy samples by stage ({whole:,} samples at 50/s over {window} s):")
        for stage, count in samples.most_common():
            print(f"  {stage:<36}{count:>7,} {count / whole:>7.1%}")
    print(f"\n(work dir {work})")


if __name__ == "__main__":
    main()
