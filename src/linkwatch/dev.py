"""`linkwatch dev` / `make run`: the live demo on one machine.

It starts the embedded broker, one worker process and simulated traffic sent in real time, and
shows what the worker sees: the funnel of every journey, drop-offs by cause, the latest triggers
and the pipeline's health, read from the worker's own /metrics and triggers topic.

The default journeys give users 30 minutes to a day per step, so real-time traffic would show
no drop-off for half an hour. The demo therefore runs the built-in `journeys-demo.toml` (every
budget divided by 60) against traffic whose simulated durations are compressed the same way: an
hour of behaviour plays out in a minute of wall-clock time. The first population is dated one
arrival window back and sent at once, so the view opens on a demo already under way, with
drop-offs whose deadlines have passed, instead of a minute of nothing.

Rendering is pure (metrics text -> `Snapshot` -> rich renderable) and tested without a broker.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import IO, Final, TypeVar

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from linkwatch.broker import BrokerError, EmbeddedBroker, free_port
from linkwatch.codec import decode_event
from linkwatch.errors import ConfigError, RecordRejected
from linkwatch.journeys import JourneySet, load_journeys
from linkwatch.produce import route
from linkwatch.settings import Settings
from linkwatch.simulate import ARRIVAL_WINDOW_MS, generate
from linkwatch.topics import ensure_topics
from linkwatch.triggers import DROPOFF_CAUSES

DEMO_JOURNEYS_FILE: Final = "journeys-demo.toml"
TIME_SCALE: Final = 1 / 60  # the demo journeys' budgets are the default ones divided by 60
# One population of users arrives over this much event time; a new one starts every window.
WINDOW_MS: Final = int(ARRIVAL_WINDOW_MS * TIME_SCALE)
# Half the demo journeys' allowed lateness: the simulator's own disorder never makes an event
# late, so the late count shows real delays between producer and worker.
DISORDER_MS: Final = 1000
READY_TIMEOUT: Final = 60.0  # seconds for the worker to answer /readyz with 200
STOP_TIMEOUT: Final = 15.0  # seconds for the worker to stop after SIGTERM before it is killed
SCRAPE_INTERVAL: Final = 1.0
SUMMARY_INTERVAL: Final = 5.0  # without the live view: one summary line this often
RATE_WINDOW: Final = 5.0  # events/s is averaged over this many seconds
LAST_TRIGGERS: Final = 8
LOG_TAIL_LINES: Final = 40
# Bounds how long a client waits on a broker that has gone (Ctrl-C reaches the broker first).
REQUEST_TIMEOUT_MS: Final = 5000
CLIENT_STOP_TIMEOUT: Final = 1.0
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)

T = TypeVar("T")


# -- metrics text -> numbers (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The worker's LinkWatch metrics at one scrape, as plain numbers."""

    events: float = 0.0
    rejected: dict[str, float] = field(default_factory=dict)  # reason -> records
    late: float = 0.0
    duplicate: float = 0.0
    reached: dict[tuple[str, str], float] = field(default_factory=dict)  # (journey, step)
    dropped: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (+ cause)
    converted: dict[str, float] = field(default_factory=dict)
    active: dict[str, float] = field(default_factory=dict)  # journey -> open instances
    triggers: dict[str, float] = field(default_factory=dict)  # type -> published
    watermark_lag: float | None = None  # seconds, the most behind of the worker's partitions

    def causes(self) -> dict[str, float]:
        """Drop-offs by cause over all journeys, in the order a buyer meets the causes."""
        totals = dict.fromkeys((cause.value for cause in DROPOFF_CAUSES), 0.0)
        for (_journey, _step, cause), count in self.dropped.items():
            totals[cause] = totals.get(cause, 0.0) + count
        return totals


def parse_metrics(text: str) -> Snapshot:
    """Read the LinkWatch series out of a Prometheus exposition (Faust's own are ignored)."""
    rejected: dict[str, float] = {}
    reached: dict[tuple[str, str], float] = {}
    dropped: dict[tuple[str, str, str], float] = {}
    converted: dict[str, float] = {}
    active: dict[str, float] = {}
    triggers: dict[str, float] = {}
    events = late = duplicate = 0.0
    lag: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "linkwatch_events_total":
                events += value
            elif name == "linkwatch_records_rejected_total":
                rejected[labels["reason"]] = value
            elif name == "linkwatch_events_late_total":
                late = value
            elif name == "linkwatch_events_duplicate_total":
                duplicate = value
            elif name == "linkwatch_journey_step_reached_total":
                reached[labels["journey"], labels["step"]] = value
            elif name == "linkwatch_journey_dropped_off_total":
                dropped[labels["journey"], labels["step"], labels["cause"]] = value
            elif name == "linkwatch_journey_converted_total":
                converted[labels["journey"]] = value
            elif name == "linkwatch_active_instances":
                active[labels["journey"]] = value
            elif name == "linkwatch_triggers_total":
                triggers[labels["type"]] = value
            elif name == "linkwatch_watermark_lag_seconds":
                lag = value if lag is None else max(lag, value)
    return Snapshot(
        events=events,
        rejected=rejected,
        late=late,
        duplicate=duplicate,
        reached=reached,
        dropped=dropped,
        converted=converted,
        active=active,
        triggers=triggers,
        watermark_lag=lag,
    )


@dataclass(frozen=True)
class FunnelRow:
    journey: str
    step: str
    reached: int
    dropped: int  # instances that dropped off before reaching this step
    cause: str | None  # the step's drop-off cause (None for the first step)


def funnel(snapshot: Snapshot, journeys: JourneySet) -> list[FunnelRow]:
    """Every step of every journey in declared order, zero where nothing happened yet."""
    rows = []
    for journey in journeys.journeys:
        for step in journey.steps:
            dropped = sum(
                count
                for (name, missed, _cause), count in snapshot.dropped.items()
                if (name, missed) == (journey.name, step.name)
            )
            rows.append(
                FunnelRow(
                    journey.name,
                    step.name,
                    round(snapshot.reached.get((journey.name, step.name), 0.0)),
                    round(dropped),
                    step.cause.value if step.cause is not None else None,
                )
            )
    return rows


def events_per_second(samples: Sequence[tuple[float, float]]) -> float | None:
    """Rate of the events counter over (monotonic time, count) samples, oldest first."""
    if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
        return None
    (t0, n0), (t1, n1) = samples[0], samples[-1]
    return max(0.0, n1 - n0) / (t1 - t0)


@dataclass(frozen=True)
class TriggerRow:
    type: str
    journey: str
    missed_step: str
    cause: str
    user: str  # the first 8 characters: enough to tell users apart on screen
    event_time: str  # HH:MM:SS UTC


def trigger_row(value: bytes | None) -> TriggerRow | None:
    """One line of the last-triggers table from a record of the triggers topic."""
    try:
        data = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    try:
        when = datetime.fromisoformat(str(data.get("event_time"))).astimezone(UTC)
        event_time = when.strftime("%H:%M:%S")
    except ValueError:
        event_time = "?"
    return TriggerRow(
        type=str(data.get("type", "?")),
        journey=str(data.get("journey") or "-"),
        missed_step=str(data.get("missed_step") or "-"),
        cause=str(data.get("cause", "?")),
        user=str(data.get("user_id", "?"))[:8],
        event_time=event_time,
    )


@dataclass(frozen=True)
class ViewData:
    """Everything the live view shows, gathered by the shell once per scrape."""

    elapsed: float  # seconds since traffic started
    metrics_url: str
    snapshot: Snapshot
    rate: float | None  # events/s
    last_triggers: Sequence[TriggerRow]  # newest first


def _n(value: float) -> str:
    return f"{round(value):,}"


def _counts(counts: dict[str, float]) -> str:
    return ", ".join(f"{key}={round(value)}" for key, value in sorted(counts.items())) or "none"


def summary_line(elapsed: float, snapshot: Snapshot, rate: float | None) -> str:
    """The plain progress line printed when there is no terminal for the live view."""
    per_second = "-" if rate is None else f"{rate:.1f}"
    triggers = {kind: snapshot.triggers.get(kind, 0.0) for kind in ("dropoff", "dead_end")}
    return (
        f"[{elapsed:5.0f}s] events {_n(snapshot.events)} ({per_second}/s), "
        f"triggers {_counts(triggers)}, rejected {_n(sum(snapshot.rejected.values()))}, "
        f"late {_n(snapshot.late)}, duplicate {_n(snapshot.duplicate)}"
    )


def render(data: ViewData, journeys: JourneySet) -> RenderableType:
    """The live view: a header, the funnel, causes/pipeline/rejections and the last triggers.
    No titles, edges or row separators: it has to fit a 40-line terminal."""
    snapshot = data.snapshot
    rate = "-" if data.rate is None else f"{data.rate:.1f}"
    header = Text.assemble(
        ("LinkWatch dev", "bold"),
        f"  {_clock(data.elapsed)}  ",
        (f"{rate} events/s", "bold cyan"),
        f"  {data.metrics_url}",
    )
    middle = Table.grid(padding=(0, 3))
    middle.add_row(_causes_table(snapshot), _pipeline_table(snapshot), _rejected_table(snapshot))
    blank = Text("")
    return Group(
        header,
        blank,
        _funnel_table(snapshot, journeys),
        blank,
        middle,
        blank,
        _last_triggers_table(data.last_triggers),
    )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def _table(*columns: str) -> Table:
    """A borderless table; a column named with a leading '>' is right-aligned (numbers)."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for column in columns:
        right = column.startswith(">")
        table.add_column(column.removeprefix(">"), justify="right" if right else "left")
    return table


def _funnel_table(snapshot: Snapshot, journeys: JourneySet) -> Table:
    table = _table("journey", "step", ">reached", ">dropped off", "cause")
    rows = funnel(snapshot, journeys)
    for journey in journeys.journeys:
        mine = [row for row in rows if row.journey == journey.name]
        notes = [
            Text(journey.name, style="bold"),
            Text(f"{_n(snapshot.active.get(journey.name, 0.0))} open", style="dim"),
            Text(f"{_n(snapshot.converted.get(journey.name, 0.0))} converted", style="green"),
        ]
        for index, row in enumerate(mine):
            table.add_row(
                notes[index] if index < len(notes) else "",
                row.step,
                _n(row.reached),
                Text(_n(row.dropped), style="red") if index else "",
                row.cause or Text("started", style="dim"),
            )
    return table


def _causes_table(snapshot: Snapshot) -> Table:
    table = _table("drop-off cause", ">count")
    for cause, count in snapshot.causes().items():
        table.add_row(cause, _n(count))
    return table


def _pipeline_table(snapshot: Snapshot) -> Table:
    table = _table("pipeline", ">count")
    for kind in sorted({"dropoff", "dead_end", *snapshot.triggers}):
        table.add_row(f"{kind} triggers", _n(snapshot.triggers.get(kind, 0.0)))
    table.add_row("valid events", _n(snapshot.events))
    table.add_row("late", _n(snapshot.late))
    table.add_row("duplicate", _n(snapshot.duplicate))
    lag = "-" if snapshot.watermark_lag is None else f"{snapshot.watermark_lag:.1f} s"
    table.add_row("watermark lag", lag)
    return table


def _rejected_table(snapshot: Snapshot) -> Table:
    table = _table("rejected records", f">{_n(sum(snapshot.rejected.values()))}")
    for reason, count in sorted(snapshot.rejected.items()):
        table.add_row(reason, _n(count))
    return table


def _last_triggers_table(rows: Sequence[TriggerRow]) -> Table:
    table = _table("trigger", "journey", "missed", "cause", "user", "UTC")
    for row in rows:
        cells = (row.type, row.journey, row.missed_step, row.cause, row.user, row.event_time)
        table.add_row(*cells, style="yellow" if row.type == "dead_end" else "")
    return table


# -- traffic ---------------------------------------------------------------------------------------


def demo_traffic(
    *, seed: int, users: int, start_ms: int, journeys: JourneySet
) -> Iterator[tuple[int, bytes]]:
    """Endless (event time, record) pairs in event-time order (within the simulator's disorder):
    populations seed, seed + 1, ... of `users` each, one starting every arrival window, so new
    users keep arriving at a steady pace while earlier ones finish their journeys. Each
    population has its own user ids, since they overlap in time. A record without an event time
    (a deliberately broken one) goes with the record before it."""
    heap: list[tuple[int, int, bytes, Iterator[tuple[int, bytes]]]] = []
    order = itertools.count()  # ties go in push order; records themselves never get compared
    population_start = start_ms

    def push(records: Iterator[tuple[int, bytes]]) -> None:
        head = next(records, None)
        if head is not None:
            heapq.heappush(heap, (head[0], next(order), head[1], records))

    while True:
        # A population's records all come at or after its start: add it once that is next.
        while not heap or heap[0][0] >= population_start:
            records = generate(
                seed=seed,
                users=users,
                start_ms=population_start,
                disorder_ms=DISORDER_MS,
                time_scale=TIME_SCALE,
                journeys=journeys,
                user_prefix=f"u{seed}-",
            )
            push(_timed(records, population_start))
            seed += 1
            population_start += WINDOW_MS
        ts, _, raw, rest = heapq.heappop(heap)
        yield ts, raw
        push(rest)


def _timed(records: Iterator[bytes], start_ms: int) -> Iterator[tuple[int, bytes]]:
    ts = start_ms
    for raw in records:
        with suppress(RecordRejected):
            ts = decode_event(raw).ts
        yield ts, raw


async def _send_in_real_time(settings: Settings, traffic: Iterator[tuple[int, bytes]]) -> None:
    """Send each record once the wall clock reaches its event time (at once if it already has),
    to its topic by `route`. One record in flight at a time: at the demo's few records a second
    that costs nothing, and when the broker goes away nothing is left to retry at shutdown."""
    producer = AIOKafkaProducer(
        **settings.aiokafka_options(),
        client_id=f"{settings.app_id}-traffic",
        acks="all",
        request_timeout_ms=REQUEST_TIMEOUT_MS,
    )
    await producer.start()
    try:
        for ts, raw in traffic:
            delay = ts / 1000 - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            topic, key = route(raw, settings)
            await producer.send_and_wait(topic, raw, key=key)
    finally:
        # A record in flight when the broker went away would be retried for the whole request
        # timeout before stop() returns; nothing is lost by not waiting for it at the end.
        with suppress(TimeoutError):
            await asyncio.wait_for(producer.stop(), timeout=CLIENT_STOP_TIMEOUT)


# -- processes -------------------------------------------------------------------------------------


class WorkerProcess:
    """`python -m linkwatch.worker` with its output in a log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        """Start the worker; returns its pid."""
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
                [sys.executable, "-m", "linkwatch.worker"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        return self._process.pid

    def exit_code(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _worker_env(settings: Settings) -> dict[str, str]:
    """Our environment plus the settings the demo chose, so the worker sees what we see."""
    return {**os.environ, **settings.to_env()}


@contextmanager
def _client_logs_to(path: Path) -> Iterator[None]:
    """Kafka clients log every lost connection; during the demo that goes to a file, not over
    the live view (the broker stops first on Ctrl-C, which reaches its process too)."""
    handler = logging.FileHandler(path)
    loggers = [logging.getLogger(name) for name in ("aiokafka", "asyncio")]
    saved = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, propagate in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.propagate = propagate
        handler.close()


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """The result of `work`, or None if a stop signal comes first (`work` is then cancelled)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    return None


async def _wait_ready(http: aiohttp.ClientSession, url: str, worker: WorkerProcess) -> bool:
    """True once /readyz answers 200; False if the worker exits or READY_TIMEOUT passes."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if worker.exit_code() is not None:
            return False
        with suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(url) as response:
                if response.status == 200:
                    return True
        await asyncio.sleep(0.5)
    return False


async def _scrape(http: aiohttp.ClientSession, url: str) -> Snapshot | None:
    try:
        async with http.get(url) as response:
            if response.status != 200:
                return None
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    return parse_metrics(text)


async def _follow_triggers(settings: Settings, partitions: int, last: deque[TriggerRow]) -> None:
    """Keep the newest triggers in `last`. No consumer group: nothing is committed. The topic
    belongs to this run (a fresh broker), so reading it from the start misses nothing."""
    consumer = AIOKafkaConsumer(
        **settings.aiokafka_options(),
        client_id=f"{settings.app_id}-view",
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
    )
    await consumer.start()
    try:
        assigned = [TopicPartition(settings.topic_triggers, n) for n in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            messages = sorted(
                (message for records in batch.values() for message in records),
                key=lambda message: message.timestamp,
            )
            for message in messages:
                row = trigger_row(message.value)
                if row is not None:
                    last.appendleft(row)
    finally:
        await consumer.stop()


# -- the demo --------------------------------------------------------------------------------------


def run_dev(
    *,
    rate_users_per_min: float = 240.0,
    duration: float | None = None,
    view: bool | None = None,
    seed: int = 7,
    out: IO[str] = sys.stdout,
) -> int:
    """Run the demo until Ctrl-C or SIGTERM, or for `duration` seconds of traffic once the
    worker is ready; return 0 after a clean stop, 1 if something failed. `view` (default: `out`
    is a terminal) shows the live view, else a summary line is printed every few seconds. Once
    traffic has started, the last line printed is the final summary (`stopped: ...`), read from
    the worker just before it is stopped."""
    if not rate_users_per_min > 0:
        raise ValueError(f"rate_users_per_min must be > 0, not {rate_users_per_min}")
    if duration is not None and not duration > 0:
        raise ValueError(f"duration must be > 0, not {duration}")
    demo = _Demo(rate_users_per_min, duration, out.isatty() if view is None else view, seed, out)
    # asyncio puts the signals it handled back to the defaults: give the caller back its own.
    in_main = threading.current_thread() is threading.main_thread()
    saved = {number: signal.getsignal(number) for number in STOP_SIGNALS} if in_main else {}
    try:
        return asyncio.run(demo.run(handle_signals=in_main))
    finally:
        for number, handler in saved.items():
            if handler is not None:
                signal.signal(number, handler)


@dataclass
class _Demo:
    rate_users_per_min: float
    duration: float | None
    view: bool
    seed: int
    out: IO[str]

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    async def run(self, *, handle_signals: bool) -> int:
        stop = asyncio.Event()
        if handle_signals:
            for number in STOP_SIGNALS:
                asyncio.get_running_loop().add_signal_handler(number, stop.set)
        run_dir = Path(tempfile.mkdtemp(prefix="linkwatch-dev-"))
        self.say(f"linkwatch dev: logs in {run_dir}")
        # Whatever is started goes on the stack, and is stopped in reverse order however we leave.
        async with AsyncExitStack() as stack:
            stack.enter_context(_client_logs_to(run_dir / "clients.log"))
            return await self._run(stack, run_dir, stop)

    async def _run(self, stack: AsyncExitStack, run_dir: Path, stop: asyncio.Event) -> int:
        journeys_file = resources.files("linkwatch").joinpath(DEMO_JOURNEYS_FILE)
        journeys_path = stack.enter_context(resources.as_file(journeys_file))
        journeys = load_journeys(journeys_path)
        broker = EmbeddedBroker(log_dir=run_dir)
        # Any other LINKWATCH_* the user set applies to both sides, so they agree on topics.
        try:
            settings = Settings(
                brokers=broker.url,
                web_port=free_port(),
                journeys_file=journeys_path,
                idle_timeout="2s",
                data_dir=run_dir / "state",
                app_id="linkwatch-dev",
                log_format="json",
            )
        except ValidationError as exc:
            raise ConfigError(f"invalid settings (LINKWATCH_* environment): {exc}") from None
        try:
            await stack.enter_async_context(broker)
        except BrokerError as exc:
            if stop.is_set():  # Ctrl-C reaches the broker too: no failure to report
                return 0
            self.say(f"linkwatch dev: {exc}")
            return 1
        self.say(f"broker   {broker.url}  (log {broker.log_path})")
        names = [*settings.input_topics.values(), settings.topic_ticks, settings.topic_triggers]
        counts = await _unless_stopped(
            ensure_topics(settings, [*names, settings.topic_dlq], settings.partitions), stop
        )
        if counts is None:
            return 0
        worker = WorkerProcess(_worker_env(settings), run_dir / "worker.log")
        stack.callback(shutil.rmtree, settings.data_dir, True)  # runs after the worker stopped
        # Without a broker the worker can only wait out its own shutdown bound: no need to.
        stack.callback(lambda: worker.stop(STOP_TIMEOUT if broker.running else 1.0))
        self.say(f"worker   pid {worker.start()}  (log {worker.log_path})")
        http = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        )
        base = f"http://127.0.0.1:{settings.web_port}"
        ready = await _unless_stopped(_wait_ready(http, f"{base}/readyz", worker), stop)
        if ready is None:
            return 0
        if not ready:
            self.say("linkwatch dev: the worker did not become ready; the end of its log:")
            self.say(worker.log_tail())
            return 1
        metrics_url = f"{base}/metrics"
        self.say(f"metrics  {metrics_url}")
        users = max(1, round(self.rate_users_per_min * WINDOW_MS / 60_000))
        # Dated one window back: the first population is under way when the view opens.
        start_ms = int(time.time() * 1000) - WINDOW_MS
        traffic = demo_traffic(seed=self.seed, users=users, start_ms=start_ms, journeys=journeys)
        last: deque[TriggerRow] = deque(maxlen=LAST_TRIGGERS)
        tasks = [
            asyncio.create_task(_send_in_real_time(settings, traffic), name="the traffic"),
            asyncio.create_task(
                _follow_triggers(settings, counts[settings.topic_triggers], last),
                name="the triggers reader",
            ),
        ]
        watch = _Watch(http, metrics_url, journeys, last)
        try:
            failure = await self._watch(watch, broker, worker, tasks, stop)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if failure is not None and not stop.is_set():  # Ctrl-C stops the broker too
            self.say(f"linkwatch dev: {failure}; the end of the worker log:")
            self.say(worker.log_tail())
            return 1
        await watch.scrape()
        self.say("stopped: " + watch.summary())
        return 0

    async def _watch(
        self,
        watch: _Watch,
        broker: EmbeddedBroker,
        worker: WorkerProcess,
        tasks: list[asyncio.Task[None]],
        stop: asyncio.Event,
    ) -> str | None:
        """Scrape and show until stopped or `duration` is over; returns what failed, if any."""
        until = None if self.duration is None else watch.started + self.duration
        next_summary = watch.started + SUMMARY_INTERVAL
        live = Live(console=Console(file=self.out), auto_refresh=False) if self.view else None
        try:
            if live is not None:
                live.start()
            while not stop.is_set():
                failure = _failure(broker, worker, tasks)
                if failure is not None:
                    return failure
                await watch.scrape()
                now = time.monotonic()
                if live is not None:
                    live.update(watch.render(), refresh=True)
                elif now >= next_summary:
                    self.say(watch.summary())
                    next_summary += SUMMARY_INTERVAL
                if until is not None and now >= until:
                    break
                pause = SCRAPE_INTERVAL if until is None else min(SCRAPE_INTERVAL, until - now)
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(pause, 0.0))
        finally:
            if live is not None:
                live.stop()
        return None


class _Watch:
    """What the demo has seen of the worker so far: the latest scrape and the event rate."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        metrics_url: str,
        journeys: JourneySet,
        last: deque[TriggerRow],
    ) -> None:
        self.http = http
        self.metrics_url = metrics_url
        self.journeys = journeys
        self.last = last
        self.started = time.monotonic()
        self.snapshot = Snapshot()
        self.samples: deque[tuple[float, float]] = deque()  # (monotonic time, events counter)

    async def scrape(self) -> None:
        """Take a fresh snapshot; keep the previous one if the worker does not answer."""
        snapshot = await _scrape(self.http, self.metrics_url)
        if snapshot is None:
            return
        now = time.monotonic()
        self.snapshot = snapshot
        self.samples.append((now, snapshot.events))
        while self.samples[0][0] < now - RATE_WINDOW:
            self.samples.popleft()

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        return summary_line(elapsed, self.snapshot, events_per_second(self.samples))

    def render(self) -> RenderableType:
        data = ViewData(
            time.monotonic() - self.started,
            self.metrics_url,
            self.snapshot,
            events_per_second(self.samples),
            list(self.last),
        )
        return render(data, self.journeys)


def _failure(
    broker: EmbeddedBroker, worker: WorkerProcess, tasks: list[asyncio.Task[None]]
) -> str | None:
    if not broker.running:
        return "the broker exited"
    code = worker.exit_code()
    if code is not None:
        return f"the worker exited (code {code})"
    for task in tasks:
        if task.done() and not task.cancelled():
            return f"{task.get_name()} stopped: {task.exception()!r}"
    return None
