"""The fault suite: workers killed with SIGKILL, a rebalance onto a survivor, the broker down
for a while, and a long soak. Each run is checked against the replay oracle: no trigger
missing, none invented or altered, duplicates only as copies with the same `trigger_id`.

`make test` runs a fast variant of each; `make faults` (pytest --faults) the long ones."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from linkwatch.broker import EmbeddedBroker, process_cpu_seconds
from linkwatch.produce import endless_traffic, produce
from linkwatch.settings import Settings
from linkwatch.simulate import generate
from tests.builders import raw
from tests.integration.faults import (
    expected_triggers,
    handled,
    kill_at_random_points,
    s3_server,
    skipped_records,
    wait_until_delivered,
)
from tests.integration.workers import (
    FAST,
    START,
    WorkerProcess,
    prepare,
    read_messages,
    run,
    send_raw,
    sum_metric,
    wait_for,
)

FAULTS_TIMEOUT = 5400  # the long variants: CI does not run them
FAST_TIMEOUT = pytest.mark.timeout(900)


@pytest.mark.parametrize(
    ("users", "kills"),
    [
        pytest.param(2000, 2, id="12k-events-2-kills", marks=FAST_TIMEOUT),
        pytest.param(
            34_000,
            5,
            id="200k-events-5-kills",
            marks=[pytest.mark.faults, pytest.mark.timeout(FAULTS_TIMEOUT)],
        ),
    ],
)
def test_kill_9_at_random_points_loses_no_trigger(
    kafka_settings: Settings, tmp_path: Path, users: int, kills: int
) -> None:
    settings = kafka_settings.model_copy(update=FAST)
    lines = list(generate(users=users, seed=5, start_ms=START, bad_ratio=0.0))
    expected = expected_triggers(lines)
    run(prepare(settings))
    assert run(produce(settings, lines)) == len(lines)
    seed = users * 31 + kills
    print(f"{len(lines)} events, {len(expected)} triggers expected, kill points seed {seed}")
    worker = kill_at_random_points(settings, tmp_path, len(lines), kills, random.Random(seed))
    try:
        result = wait_until_delivered(settings, expected, worker, timeout=600 + len(lines) / 100)
    finally:
        worker.kill()
    print(result.summary())
    assert not result.missing, f"{result.summary()}\n{worker.tail_log()}"
    assert not result.invented, result.summary()
    assert not result.altered, result.summary()  # a re-sent trigger is the same, byte for byte
    assert not skipped_records(tmp_path)  # every restart resumed at its committed offsets


def test_a_commit_cut_short_is_not_restored(kafka_settings: Settings, tmp_path: Path) -> None:
    """A worker killed while its commit's writes reach the broker leaves part of them in the
    changelog, with no progress record after them. The next worker restores the last whole
    commit instead, and undoes the part in the changelog. The part here deletes a user whose
    event, sent again, is then a duplicate only if the user's state was restored (CI, once:
    restored parts of a commit made replayed records count twice, and triggers were invented)."""
    settings = kafka_settings.model_copy(update=FAST)
    run(prepare(settings))
    changelog = f"{settings.app_id}-states-changelog"
    event = raw(event_id="cut-1", user_id="cut-user", ts=int(time.time() * 1000))
    with WorkerProcess(settings, tmp_path, name="first") as first:
        assert run(produce(settings, [event])) == 1
        assert wait_for(lambda: handled(first) >= 1, timeout=60), first.tail_log()
        assert first.terminate(timeout=60) == 0  # its last commit writes the user's state
    (written,) = [m for m in run(read_messages(settings, changelog)) if m.key == b"cut-user"]
    # What a kill in the middle of the next commit leaves behind: part of it (the user
    # deleted, as a watermark passing their expiry would), no progress record.
    cut = run(send_raw(settings, changelog, b"cut-user", None, written.partition))
    with WorkerProcess(settings, tmp_path, name="second") as second:
        unfinished = "linkwatch_unfinished_commits_total"
        assert second.metrics_value(unfinished, table="states") == 1, second.tail_log()
        assert run(produce(settings, [event])) == 1  # the same event again
        assert wait_for(lambda: handled(second) >= 1, timeout=60), second.tail_log()
        assert second.metrics_value("linkwatch_events_duplicate_total") == 1
    # The deletion is undone in the changelog: no later recovery restores it either.
    after = [
        m.value
        for m in run(read_messages(settings, changelog))
        if (m.partition, m.key) == (written.partition, b"cut-user") and m.offset > cut
    ]
    assert after == [written.value]


@pytest.mark.parametrize(
    ("users", "peer_commits"),
    [
        pytest.param(1000, True, id="6k-events", marks=FAST_TIMEOUT),
        # The peer dies before it has committed anything: the survivor takes over partitions
        # the group never committed, with records waiting in them.
        pytest.param(1000, False, id="6k-events-never-committed", marks=FAST_TIMEOUT),
        pytest.param(
            17_000,
            True,
            id="100k-events",
            marks=[pytest.mark.faults, pytest.mark.timeout(FAULTS_TIMEOUT)],
        ),
    ],
)
def test_the_survivor_of_a_pair_takes_over_and_fires_the_dead_ones_deadlines(
    kafka_settings: Settings, tmp_path: Path, users: int, peer_commits: bool
) -> None:
    # The input is history (2024) sent in two halves. A survivor that has handled its share
    # of the first half before the second arrives must not take the pause for the end of
    # traffic: past an idle timeout its watermark would follow the clock (as it should, live)
    # and the whole second half would be late.
    settings = kafka_settings.model_copy(update=FAST | {"idle_timeout": "30s"})
    lines = list(generate(users=users, seed=9, start_ms=START, bad_ratio=0.0))
    expected = expected_triggers(lines)
    run(prepare(settings))
    first = WorkerProcess(settings, tmp_path, name="first").start()
    second = WorkerProcess(settings, tmp_path, name="second").start()
    try:

        def split() -> bool:
            """Both own partitions, as a group of two must after its rebalance."""
            owned = [w.metrics_value("linkwatch_partitions_assigned") for w in (first, second)]
            return all(count >= 1 for count in owned) and sum(owned) == settings.partitions

        assert wait_for(split, timeout=120), first.tail_log() + "\n" + second.tail_log()
        half = len(lines) // 2
        if not peer_commits:
            first.kill()
        assert run(produce(settings, lines[:half])) == half
        if peer_commits:
            assert wait_for(lambda: handled(first) > 0 and handled(second) > 0, timeout=120)
            first.kill()  # SIGKILL: its partitions hold open journeys and pending deadlines
        assert run(produce(settings, lines[half:])) == len(lines) - half

        def took_over() -> bool:
            return second.metrics_value("linkwatch_partitions_assigned") == settings.partitions

        assert wait_for(took_over, timeout=180), second.tail_log()
        result = wait_until_delivered(settings, expected, second, timeout=600 + len(lines) / 100)
        assert second.alive, second.tail_log()  # it survived
    finally:
        first.kill()
        second.kill()
    print(result.summary())
    assert not result.missing, f"{result.summary()}\n{second.tail_log()}"
    assert not result.invented, result.summary()
    assert not result.altered, result.summary()
    assert not skipped_records(tmp_path)


@pytest.mark.parametrize(
    ("users", "outage"),
    [
        pytest.param(200, 15.0, id="1k-events-15s", marks=FAST_TIMEOUT),
        pytest.param(
            1000,
            30.0,
            id="6k-events-30s",
            marks=[pytest.mark.faults, pytest.mark.timeout(FAULTS_TIMEOUT)],
        ),
    ],
)
def test_the_worker_rides_out_a_broker_outage(tmp_path: Path, users: int, outage: float) -> None:
    """The broker stops mid-run and comes back `outage` seconds later with its data (Tansu's
    s3:// storage engine on a local S3 server): the same worker process carries on.

    Small runs: moto, the S3 server, serves Tansu a few hundred records/s on this machine."""
    with s3_server(tmp_path) as s3:
        broker = EmbeddedBroker(
            log_dir=tmp_path, extra_args=["--storage-engine", "s3://tansu/"], env=s3
        )
        with broker:
            settings = Settings(brokers=broker.url).namespaced(
                "outage", data_dir=tmp_path / "state"
            )
            # History sent in two halves around the outage: as in the rebalance test, the
            # pause between them must not pass for the end of traffic. The second half takes
            # seconds to produce through the S3-backed broker, and a topic silent for the
            # idle timeout meanwhile stops holding the watermark: with 10 s, 1 run in 3 here
            # (and one on CI) found a purchase late and invented its drop-offs.
            settings = settings.model_copy(update=FAST | {"idle_timeout": "30s"})
            lines = list(generate(users=users, seed=13, start_ms=START, bad_ratio=0.0))
            expected = expected_triggers(lines)
            run(prepare(settings))
            half = len(lines) // 2
            assert run(produce(settings, lines[:half])) == half
            with WorkerProcess(settings, tmp_path) as worker:
                assert wait_for(lambda: handled(worker) > 0, timeout=120), worker.tail_log()
                broker.stop()
                print(f"broker stopped at {handled(worker):.0f} records handled")
                time.sleep(outage)
                assert worker.alive, worker.tail_log()
                broker.start()
                assert run(produce(settings, lines[half:])) == len(lines) - half
                result = wait_until_delivered(
                    settings, expected, worker, timeout=600 + len(lines) / 100
                )
                assert worker.alive, worker.tail_log()  # the same process, all along
                assert worker.get("/healthz", quiet=True) == 200
    print(result.summary())
    assert not result.missing, f"{result.summary()}\n{worker.tail_log()}"
    assert not result.invented, result.summary()
    assert not result.altered, result.summary()
    assert not skipped_records(tmp_path)


# 2000-01-02, just after the oldest event time accepted: 26 years of event time fit before the
# clock, about 2.3M records of this traffic at 30 days apart (from 2020, the 15-minute soak at
# 1,412 records/s ran into the present after 400 s, and every record after that was rejected as
# from the future: the worker had nothing left to do).
SOAK_START = 946_771_200_000
# The load generator fills batches for this long. Tansu's memory engine lists every batch of a
# partition on each fetch that returns records (bench/tansu_fetch.py: about 0.9 ms of broker CPU
# per 1,000 batches stored), so at 5 ms, one batch per record at this rate, the broker's cost per
# fetch grew all along the 15-minute soak until it took a whole core and the worker's lag and
# buffers grew with it. Collectors batch on the wire too; the worker does not see the difference.
SOAK_LINGER_MS = 100
DAY_MS = 86_400_000


def soak_traffic(spacing_days: int) -> Iterator[bytes]:
    """Endless simulated populations of 1,000 users, `spacing_days` of event time apart: each
    one's journeys and (90-day) profiles end while later ones arrive, so under steady traffic
    the state must stop growing once the first populations expire."""
    starts = itertools.count(SOAK_START, spacing_days * DAY_MS)
    return endless_traffic(
        seed=100, users=1000, bad_ratio=0.001, wall_clock_ms=lambda: next(starts)
    )


@dataclass
class Sample:
    t: float  # seconds into the soak
    produced: int
    handled: float
    rss_mb: float
    users: float
    entities: float
    worker_cpu: float  # share of one core since the sample before (1.0 = a whole core)
    broker_cpu: float

    @property
    def lag(self) -> float:
        return self.produced - self.handled


@pytest.mark.parametrize(
    ("minutes", "spacing_days"),
    [
        # 90 s reach steady state only if one population has expired before the next-but-one.
        pytest.param(1.5, 100, id="90s", marks=FAST_TIMEOUT),
        pytest.param(
            15.0, 30, id="15min", marks=[pytest.mark.faults, pytest.mark.timeout(FAULTS_TIMEOUT)]
        ),
    ],
)
def test_a_soak_at_half_the_maximum_rate_keeps_memory_lag_and_state_bounded(
    broker: EmbeddedBroker,
    kafka_settings: Settings,
    tmp_path: Path,
    minutes: float,
    spacing_days: int,
) -> None:
    # The worker's default timers (commits every 1 s, ticks every 250 ms), as deployed: the
    # tests' fast ones commit twice as often, a cost per second that shows at a steady rate.
    settings = kafka_settings
    run(prepare(settings))
    traffic = soak_traffic(spacing_days)
    # The maximum rate: a backlog, drained by a worker started after it was written.
    backlog = list(itertools.islice(traffic, 10_000 if minutes < 5 else 30_000))
    assert run(produce(settings, backlog)) == len(backlog)
    produced = [len(backlog)]
    with WorkerProcess(settings, tmp_path) as worker:
        began = time.monotonic()
        assert wait_for(lambda: handled(worker) >= len(backlog), timeout=600, interval=0.2)
        maximum = len(backlog) / (time.monotonic() - began)
        rate = maximum / 2
        print(
            f"maximum {maximum:.0f} records/s ({len(backlog)}-record backlog); soak at {rate:.0f}/s"
        )

        def send() -> None:
            def count(n: int) -> None:
                produced[0] = len(backlog) + n

            soak = itertools.islice(traffic, int(rate * minutes * 60))
            run(produce(settings, soak, rate=rate, on_sent=count, linger_ms=SOAK_LINGER_MS))

        sender = threading.Thread(target=send, daemon=True)
        samples: list[Sample] = []
        start = time.monotonic()
        cpu_before = (start, worker.cpu_seconds(), process_cpu_seconds(broker.pid) or 0.0)
        sender.start()
        while sender.is_alive():
            try:
                metrics = worker.metrics()
            except OSError:  # a scrape that timed out under load: the next one counts
                continue
            now, worker_cpu, broker_cpu = (
                time.monotonic(),
                worker.cpu_seconds(),
                process_cpu_seconds(broker.pid) or 0.0,
            )
            elapsed = now - cpu_before[0]
            samples.append(
                Sample(
                    t=now - start,
                    produced=produced[0],
                    handled=handled(worker),
                    rss_mb=worker.rss_mb(),
                    users=sum_metric(metrics, "linkwatch_state_keys", stage="users"),
                    entities=sum_metric(metrics, "linkwatch_state_keys", stage="entities"),
                    worker_cpu=(worker_cpu - cpu_before[1]) / elapsed,
                    broker_cpu=(broker_cpu - cpu_before[2]) / elapsed,
                )
            )
            cpu_before = (now, worker_cpu, broker_cpu)
            time.sleep(5)
        sender.join()
        assert wait_for(lambda: handled(worker) >= produced[0], timeout=120), worker.tail_log()
        assert worker.alive
        rejected = worker.metrics_value("linkwatch_records_rejected_total")
        future = worker.metrics_value("linkwatch_records_rejected_total", reason="future_timestamp")
        assert future == 0, "the soak's traffic reached the present: it tests nothing after that"
        assert rejected <= 0.01 * produced[0]  # the traffic's own bad records (0.1%)

    print("   t(s)  produced   lag  rss(MiB)  users  entities  cpu(worker)  cpu(broker)")
    for s in samples[:: max(1, len(samples) // 30)]:
        row = f"{s.t:7.0f} {s.produced:9d} {s.lag:5.0f} {s.rss_mb:9.1f}"
        print(f"{row} {s.users:6.0f} {s.entities:9.0f} {s.worker_cpu:12.0%} {s.broker_cpu:12.0%}")
    third = len(samples) // 3
    warm, end = samples[third : third + max(1, third // 2)], samples[-max(1, third // 2) :]
    rss_warm = sum(s.rss_mb for s in warm) / len(warm)
    rss_end = sum(s.rss_mb for s in end) / len(end)
    drift = (rss_end - rss_warm) / rss_warm
    print(f"RSS after warm-up {rss_warm:.1f} MiB, at the end {rss_end:.1f} MiB: drift {drift:+.1%}")
    # The bound is for the 15-minute soak. In 90 s the worker's memory has not
    # settled: its fetch and stream buffers follow the lag, and four runs of the fast soak
    # on this machine (CI's included) drifted +10.0% to +14.4% with users and entities flat
    # and the lag bounded. The fast soak catches memory that grows with the records handled
    # (its 160k records at 1 KB each would be more than the whole warm RSS).
    assert drift < (0.10 if minutes >= 10 else 0.25)
    # Lag: the worker keeps up, bursts aside (bounded by seconds of traffic, not growing).
    assert max(s.lag for s in samples[third:]) <= max(2_000, rate * 30)
    # State: users of populations whose journeys and profiles have ended are forgotten, so
    # what is held levels off. Only the long run reaches the plateau. Averages over thirds, as
    # single samples swing by a population (1,000 users) with the phase they are taken at.
    if minutes >= 10:
        middle, last = samples[third : 2 * third], samples[2 * third :]
        for held in ("users", "entities"):
            before = sum(getattr(s, held) for s in middle) / len(middle)
            after = sum(getattr(s, held) for s in last) / len(last)
            print(
                f"{held} held: {before:.0f} on average in the middle third, {after:.0f} in the last"
            )
            assert after <= 1.1 * before, held
