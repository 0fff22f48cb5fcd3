"""Scale-out: one LinkWatch worker against a group of N on the same input, in one run.

    .venv/bin/python bench/scale_out.py [--events 200000] [--workers 2] [--partitions 4]
        [--out bench/results/scale-out.json] [--keep-logs]

Each configuration gets its own topics (4 partitions each by default) on one embedded Tansu
broker and the same records (REES46, amplified, as in bench/service.py). Its workers start on
the empty topics and the run waits until the group has split the partitions between them (every
worker owns at least one, and together all), so no rebalance happens inside the measurement.
Then the records are produced, and every worker's /metrics is scraped every 0.25 s until the
group has counted all of them (records = linkwatch_events_total +
linkwatch_records_rejected_total, as in bench/service.py).

Reported per configuration:
  events/s          (all records - records counted at the first scrape with progress) /
                    (time from that scrape to the one that shows all of them)
  while all busy    the same, up to the first scrape at which some worker has counted its
                    last record (its partitions drained; the others still work): the group's
                    rate while every member has work
  CPU               each worker's, the broker's and this script's (it produces and scrapes)
                    over the window from /proc, and their sum over wall time x cores: how much
                    of the machine was busy
  us/event          worker CPU seconds per record: if a group member spends no more per record
                    than a lone worker, members do not slow each other down and the rate grows
                    with the cores given to workers (the projection below rests on it)
  triggers          the trigger ids read back from the configuration's triggers topic once all
                    records are counted and the triggers counter has been still for 10 s: the
                    group must give the same ids as the lone worker

Workers run with the default settings. While the group forms they have seen no event, and a
partition that has seen none does not follow the clock, so the (2019) input is not late when it
comes. After the last record the partitions fall silent and, idle_timeout (5 s) later, their
watermark follows the clock: the journeys still open end then, as in bench/service.py, and the
triggers are read once that has happened (the counter still for 10 s).

Prints a table and writes bench/results/scale-out.json. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from linkwatch.broker import EmbeddedBroker, process_cpu_seconds
from linkwatch.produce import produce
from linkwatch.settings import Settings
from linkwatch.topics import ensure_topics
from service import (
    RECORDS,
    SCRAPE_INTERVAL,
    BenchError,
    Child,
    free_port,
    input_records,
    machine,
    new_tag,
    proc_peak_rss_mb,
    scrape,
    total,
    worker_env,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scale-out.json"
GROUP_TIMEOUT = 180.0  # seconds for the group to split the partitions
SETTLE_SECONDS = 10.0  # triggers counter still this long (> idle_timeout) before the topic is read


def group_settings(broker: EmbeddedBroker, tag: str, partitions: int, work: Path) -> Settings:
    return Settings(brokers=broker.url, app_id="bench").namespaced(
        tag,
        partitions=partitions,
        data_dir=work / f"{tag}-state",
        log_format="text",
    )


def assigned(samples: dict[str, float] | None) -> float:
    return total(samples or {}, "linkwatch_partitions_assigned")


def wait_for_split(members: list[Child], urls: list[str], partitions: int) -> None:
    deadline = time.monotonic() + GROUP_TIMEOUT
    while time.monotonic() < deadline:
        for member in members:
            if not member.alive:
                raise member.failure("exited while the group formed")
        owned = [assigned(scrape(url)) for url in urls]
        if all(count >= 1 for count in owned) and sum(owned) == partitions:
            return
        time.sleep(0.5)
    raise members[0].failure(f"the group did not split {partitions} partitions in time")


async def read_trigger_ids(bootstrap: str, settings: Settings) -> list[str]:
    """Every trigger id on the configuration's triggers topic, from the start to its end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(settings.topic_triggers, p) for p in range(settings.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        ids: list[str] = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batches = await consumer.getmany(*parts, timeout_ms=1000)
            for records in batches.values():
                ids.extend(orjson.loads(r.value)["trigger_id"] for r in records)
        return ids
    finally:
        await consumer.stop()


def run_group(
    broker: EmbeddedBroker,
    records: list[bytes],
    workers: int,
    partitions: int,
    work: Path,
    stack: contextlib.ExitStack,
) -> dict[str, Any]:
    tag = new_tag(f"so{workers}x")
    settings = group_settings(broker, tag, partitions, work)
    topics = [
        *settings.input_topics.values(),
        settings.topic_ticks,
        settings.topic_triggers,
        settings.topic_dlq,
    ]
    asyncio.run(ensure_topics(settings, topics, partitions))
    members: list[Child] = []
    urls: list[str] = []
    for number in range(1, workers + 1):
        own = settings.model_copy(
            update={"web_port": free_port(), "data_dir": work / f"{tag}-state-{number}"}
        )
        name = f"worker {number} of {workers}"
        log = work / f"{tag}-worker-{number}.log"
        member = Child(name, [sys.executable, "-m", "linkwatch.worker"], worker_env(own), log)
        stack.callback(member.stop)
        members.append(member.start())
        urls.append(f"http://127.0.0.1:{own.web_port}")
    wait_for_split(members, urls, partitions)
    owned = [assigned(scrape(url)) for url in urls]

    def cpu() -> tuple[list[float], float, float]:
        return (
            [process_cpu_seconds(m.pid) or 0.0 for m in members],
            process_cpu_seconds(broker.pid) or 0.0,
            time.process_time(),
        )

    start_cpu = cpu()
    started = time.monotonic()
    sent = asyncio.run(produce(settings, records))
    produce_s = time.monotonic() - started
    expected = sent
    timeout = 120 + sent / 100
    first: tuple[float, float] | None = None  # (time, records) at the first scrape with progress
    progress: list[tuple[float, list[float]]] = []
    while True:
        began = time.monotonic()
        counts = []
        for member, url in zip(members, urls, strict=True):
            if not member.alive:
                raise member.failure("exited before the group consumed everything")
            counts.append(total(scrape(url) or {}, *RECORDS))
        at = (began + time.monotonic()) / 2
        if first is None and sum(counts) > 0:
            first = (at, sum(counts))
        if first is not None:
            progress.append((at, counts))
        if sum(counts) >= expected:
            end_cpu = cpu()
            break
        if began - started > timeout:
            raise members[0].failure(f"the group did not consume {expected:,} in {timeout:.0f} s")
        time.sleep(max(0.0, began + SCRAPE_INTERVAL - time.monotonic()))
    assert first is not None
    first_at, first_count = first
    seconds = at - first_at
    # The first scrape at which some member had counted its last record.
    finals = progress[-1][1]
    drained_at, drained_counts = next(
        (t, c) for t, c in progress if any(c[i] >= finals[i] for i in range(workers))
    )
    busy_s = drained_at - first_at

    # Outputs: let the triggers counter come to rest, then read the ids back.
    last, still_since = -1.0, time.monotonic()
    while time.monotonic() - still_since < SETTLE_SECONDS:
        now = sum(total(scrape(url) or {}, "linkwatch_triggers_total") for url in urls)
        if now != last:
            last, still_since = now, time.monotonic()
        time.sleep(0.5)
    ids = asyncio.run(read_trigger_ids(broker.bootstrap, settings))
    late = sum(total(scrape(url) or {}, "linkwatch_events_late_total") for url in urls)
    peaks = [proc_peak_rss_mb(m.pid) for m in members]
    for member in members:
        member.stop()

    worker_cpu = [b - a for a, b in zip(start_cpu[0], end_cpu[0], strict=True)]
    broker_cpu = end_cpu[1] - start_cpu[1]
    bench_cpu = end_cpu[2] - start_cpu[2]
    wall = at - started
    events = sent - first_count
    return {
        "workers": workers,
        "partitions": partitions,
        "partitions_owned": owned,
        "events": sent,
        "produce_s": produce_s,
        "seconds": seconds,
        "events_per_s": events / seconds if seconds > 0 else None,
        "busy_seconds": busy_s,
        "events_per_s_all_busy": (
            (sum(drained_counts) - first_count) / busy_s if busy_s > 0 else None
        ),
        "per_worker_events": finals,
        "worker_cpu_s": worker_cpu,
        "broker_cpu_s": broker_cpu,
        "bench_cpu_s": bench_cpu,
        "wall_s_from_produce": wall,
        "machine_busy": (sum(worker_cpu) + broker_cpu + bench_cpu) / wall / (os.cpu_count() or 1),
        "worker_us_per_event": sum(worker_cpu) / sent * 1e6,
        "peak_rss_mb": peaks,
        "late": late,
        "triggers_counted": last,
        "trigger_ids": len(ids),
        "unique_trigger_ids": len(set(ids)),
        "_ids": sorted(set(ids)),
        "progress": [
            (round(t - first_at, 3), c) for t, c in progress[:: max(1, round(1 / SCRAPE_INTERVAL))]
        ]
        + [(round(progress[-1][0] - first_at, 3), progress[-1][1])],
    }


def print_row(r: dict[str, Any]) -> None:
    cpu = "+".join(f"{c:.0f}" for c in r["worker_cpu_s"])
    print(
        f"{r['workers']:>7}{r['events']:>9,}{r['seconds']:>9.1f}{r['events_per_s']:>10,.0f}"
        f"{r['events_per_s_all_busy']:>10,.0f}{cpu:>12}{r['broker_cpu_s']:>8.1f}"
        f"{r['bench_cpu_s']:>7.1f}{r['machine_busy']:>7.0%}{r['worker_us_per_event']:>9.0f}"
        f"{r['unique_trigger_ids']:>10,}",
        flush=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="input records")
    parser.add_argument("--workers", type=int, default=2, help="members of the larger group")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args(argv)
    if args.events < 1 or not 2 <= args.workers <= args.partitions:
        parser.error("--events must be positive and 2 <= --workers <= --partitions")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="lw-bench-scale-"))
    records, source = input_records(args.events)
    print(f"data: {source}; work dir {work}", flush=True)
    runs: list[dict[str, Any]] = []
    ok = False
    try:
        with contextlib.ExitStack() as stack:
            broker = stack.enter_context(EmbeddedBroker(log_dir=work / "broker"))
            print(f"broker: Tansu on {broker.bootstrap}", flush=True)
            print(
                f"{'workers':>7}{'events':>9}{'seconds':>9}{'events/s':>10}{'all busy':>10}"
                f"{'worker cpu':>12}{'broker':>8}{'bench':>7}{'busy':>7}{'us/event':>9}"
                f"{'triggers':>10}"
            )
            for workers in (1, args.workers):
                runs.append(run_group(broker, records, workers, args.partitions, work, stack))
                print_row(runs[-1])
        ok = True
    except BenchError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        if not ok:
            print(f"logs kept in {work}", file=sys.stderr)
    lone, group = runs
    same = lone.pop("_ids") == group.pop("_ids")
    ratio = group["events_per_s"] / lone["events_per_s"]
    busy_ratio = group["events_per_s_all_busy"] / lone["events_per_s_all_busy"]
    per_core = 1e6 / group["worker_us_per_event"]
    print(f"{args.workers} workers / 1: {ratio:.2f} overall, {busy_ratio:.2f} while all busy")
    print(f"same trigger ids from the group as from the lone worker: {same}")
    print(
        f"worker CPU per record: {lone['worker_us_per_event']:.0f} us alone, "
        f"{group['worker_us_per_event']:.0f} us in the group -> a worker on a core of its own "
        f"handles ~{per_core:,.0f} records/s; N workers on N cores (N <= partitions, broker "
        f"elsewhere) ~N x {per_core:,.0f}/s"
    )
    info["loadavg_end"] = os.getloadavg()
    result = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": info,
        "data": source,
        "runs": runs,
        "ratio": ratio,
        "ratio_all_busy": busy_ratio,
        "same_trigger_ids": same,
        "projected_records_per_s_per_worker_core": per_core,
    }
    write_results(result, args.out, work, args.keep_logs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
