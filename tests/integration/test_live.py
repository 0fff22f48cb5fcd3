"""The live worker on a real broker gives what `linkwatch replay` gives and fires drop-offs of
a partition that has gone quiet (crashes, rebalances and outages: test_faults.py)."""

from __future__ import annotations

import base64
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import orjson
import pytest

from linkwatch.deadletters import DeadLetter
from linkwatch.journeys import load_journeys
from linkwatch.produce import produce
from linkwatch.replay import replay_lines
from linkwatch.settings import Settings
from linkwatch.signals import Published
from linkwatch.simulate import daytime_zone, generate
from linkwatch.triggers import Resolution, TopicRecord, Trigger
from tests.integration.workers import (
    FAST,
    START,
    WorkerProcess,
    canonical,
    prepare,
    read_topic,
    resolution_ids,
    run,
    send_raw,
    sum_metric,
    trigger_ids,
    wait_for,
)


class Oracle(NamedTuple):
    """What replay gives: triggers and resolutions (as on the topic), dead letters, and
    health and profile records (as JSON, by topic)."""

    triggers: list[TopicRecord]
    dead: list[DeadLetter]
    records: dict[str, Counter[bytes]]


def oracle(lines: list[bytes]) -> Oracle:
    triggers: list[TopicRecord] = []
    dead: list[DeadLetter] = []
    records: dict[str, Counter[bytes]] = {"health": Counter(), "profiles": Counter()}

    def on_record(published: Published) -> None:
        records[published.topic][canonical(published.record.model_dump(mode="json"))] += 1

    replay_lines(
        lines,
        load_journeys(),
        on_trigger=triggers.append,
        on_dead_letter=dead.append,
        on_record=on_record,
        close_open=True,  # the live worker ends there once idle partitions follow the clock
    )
    return Oracle(triggers, dead, records)


@pytest.mark.timeout(900)
def test_live_equals_replay_and_metrics_agree(kafka_settings: Settings, tmp_path: Path) -> None:
    settings = kafka_settings.model_copy(update=FAST)
    # 56 hours of traffic: every capability shows (the entity stage lags stage 1 by minutes
    # at this backlog, README "Known limitations", so the run is kept to ~12,000 records).
    lines = list(generate(users=2000, seed=11, start_ms=START, bad_ratio=0.01))
    assert len(lines) >= 11_000
    expected, dead, records = oracle(lines)
    assert all(records.values()), "the sample shows link alerts and tier changes"
    run(prepare(settings))
    # Two records only a live worker can reject: wrong topic for the kind, wrong key.
    click = orjson.loads(next(line for line in lines if b'"kind":"click"' in line))
    wrong_topic = orjson.dumps(click | {"event_id": "wrong-topic"})
    wrong_key = orjson.dumps(click | {"event_id": "wrong-key"})

    with WorkerProcess(settings, tmp_path) as worker:
        assert run(produce(settings, lines)) == len(lines)
        run(send_raw(settings, settings.topic_purchase, click["user_id"].encode(), wrong_topic))
        run(send_raw(settings, settings.topic_click, b"someone-else", wrong_key))
        expected_ids = {t.trigger_id for t in expected if isinstance(t, Trigger)}
        expected_resolutions = {r.resolution_id for r in expected if isinstance(r, Resolution)}

        def all_fired() -> bool:
            return sum_metric(worker.metrics(), "linkwatch_triggers_total") >= len(expected_ids)

        assert wait_for(all_fired, timeout=240), worker.tail_log()

        def all_recorded() -> bool:
            published = run(read_topic(settings, settings.topic_profiles))
            return len(published) >= sum(records["profiles"].values())

        assert wait_for(all_recorded, timeout=540), worker.tail_log()
        time.sleep(2)  # anything extra would show up now
        metrics = worker.metrics()
        live = run(read_topic(settings, settings.topic_triggers))
        health = run(read_topic(settings, settings.topic_health))
        profiles = run(read_topic(settings, settings.topic_profiles))
        letters = [orjson.loads(v) for _, v in run(read_topic(settings, settings.topic_dlq))]
        assert worker.terminate(timeout=settings.shutdown_timeout + 5) == 0

    ids = trigger_ids(live)
    assert set(ids) == expected_ids
    assert len(ids) == len(set(ids))  # nothing sent twice in a clean run
    assert set(resolution_ids(live)) == expected_resolutions
    assert len(expected_resolutions) > 0
    # The entity stage, spread over partitions and fed by marks, decides as replay does.
    assert Counter(canonical(orjson.loads(v)) for _, v in health) == records["health"]
    assert Counter(canonical(orjson.loads(v)) for _, v in profiles) == records["profiles"]
    assert sum_metric(metrics, "linkwatch_signals_refused_total") == 0
    # Dead letters: one for one with the bad records, plus the two live-only rejections.
    expected_raw = Counter(d.original_bytes() for d in dead) + Counter([wrong_topic, wrong_key])
    assert Counter(base64.b64decode(d["raw"]) for d in letters) == expected_raw
    reasons = Counter(d["reason"] for d in letters)
    assert reasons["topic_mismatch"] == 1
    assert reasons["key_mismatch"] == 1
    assert all(d["source"]["type"] == "kafka" and d["source"]["offset"] >= 0 for d in letters)
    # Metrics agree with what was produced and what the oracle says.
    report_valid = len(lines) - len(dead)
    assert sum_metric(metrics, "linkwatch_events_total") == report_valid
    for reason, count in Counter(d.reason.value for d in dead).items():
        assert sum_metric(metrics, "linkwatch_records_rejected_total", reason=reason) == count
    by_type = Counter(t.type for t in expected if isinstance(t, Trigger))
    for kind, count in by_type.items():
        assert sum_metric(metrics, "linkwatch_triggers_total", type=kind) == count
    report = replay_lines(lines, load_journeys(), close_open=True).report
    for (journey, step, cause), count in report.dropped.items():
        # Every drop-off, published or kept back by suppression.
        assert (
            sum_metric(
                metrics,
                "linkwatch_journey_dropped_off_total",
                journey=journey,
                step=step,
                cause=cause,
            )
            == count
        )
    for (kind, reason), count in report.withheld.items():
        assert (
            sum_metric(metrics, "linkwatch_triggers_withheld_total", type=kind, reason=reason)
            == count
        )
    assert sum(report.withheld.values()) > 0
    assert sum_metric(metrics, "linkwatch_resolutions_total") == len(expected_resolutions)
    # Sound / traffic / sales agree with the replay report's.
    commerce = report.commerce
    channels = commerce.channels.values()
    assert sum_metric(metrics, "linkwatch_traffic_clicks_total") == sum(c.clicks for c in channels)
    assert sum_metric(metrics, "linkwatch_sound_shares_total") == sum(c.shares for c in channels)
    assert sum_metric(metrics, "linkwatch_sales_purchases_total") == sum(
        c.purchases for c in channels
    )
    revenue = sum(c.revenue.get("CNY", 0) for c in channels)
    assert sum_metric(metrics, "linkwatch_sales_revenue_total", currency="CNY") == pytest.approx(
        float(revenue)
    )
    assert sum_metric(metrics, "linkwatch_events_late_total") == 0
    assert sum_metric(metrics, "linkwatch_active_instances") == 0  # everything closed
    assert sum_metric(metrics, "faust_messages_received_total") > 0  # Faust's own sensor too


def test_a_quiet_partition_still_fires_its_drop_offs(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings.model_copy(update=FAST)
    run(prepare(settings))
    with WorkerProcess(settings, tmp_path) as worker:
        # Real-time traffic: a cart 29m57s ago, so its 30m checkout budget ends in 3 s, and
        # then nothing else ever arrives on any partition.
        now = int(time.time() * 1000)
        deadline = now + 3_000
        cart = {
            "kind": "click",
            "event_id": "quiet-1",
            "user_id": "quiet-user",
            "ts": deadline - 30 * 60_000,
            "channel": "web",
            "link_id": "l1",
            "url": "https://shop.example/cart",
            "page": "cart",
            "tz": daytime_zone(now),  # quiet hours (22:00-08:00 local) would hold it back
        }
        run(send_raw(settings, settings.topic_click, b"quiet-user", orjson.dumps(cart)))

        def fired() -> bool:
            return bool(run(read_topic(settings, settings.topic_triggers)))

        # Bound from the issue: idle_timeout (2 s) + 2 s after the deadline; the extra slack
        # only keeps a loaded CI machine from failing it (the bench reports the real delay).
        assert wait_for(fired, timeout=3 + 2 + 2 + 10, interval=0.5), worker.tail_log()
        (record,) = run(read_topic(settings, settings.topic_triggers))
        trigger = orjson.loads(record[1])
        assert (trigger["journey"], trigger["missed_step"]) == ("cart_to_purchase", "checkout")
        assert trigger["user_id"] == "quiet-user"


@pytest.mark.parametrize(
    "cache_max", [pytest.param(0, id="all-in-memory"), pytest.param(20, id="cache-of-20")]
)
def test_the_rocksdb_store_gives_the_same_triggers(
    kafka_settings: Settings, tmp_path: Path, cache_max: int
) -> None:
    """The same oracle check on the RocksDB store (rocksdict): state written in each
    partition's event context, read back, and scanned when partitions are assigned; with
    every state held decoded, and with at most 20 per partition (the rest read back from
    each partition's database when needed), deadlines decided 3 at a time (delivered
    and written before the next 3: `fire_chunk`), and the input topics paused whenever the
    entity stage holds more than 10 records it cannot let go (`backpressure`).

    Not tested here: restarting onto RocksDB state. On Tansu, Faust's recovery refuses it,
    because Tansu under-reports a topic's end offset (README, known limitations)."""
    bounded = {"fire_chunk": 3, "entity_held_max": 10} if cache_max else {"fire_chunk": 0}
    settings = kafka_settings.model_copy(
        update=FAST | {"store": "rocksdb://", "state_cache_max": cache_max} | bounded
    )
    lines = list(generate(users=800, seed=23, start_ms=START, bad_ratio=0.01))
    expected, _, records = oracle(lines)
    expected_ids = {t.trigger_id for t in expected if isinstance(t, Trigger)}
    run(prepare(settings))
    with WorkerProcess(settings, tmp_path) as worker:
        run(produce(settings, lines))

        # (users held, of them decoded in memory) at each look while the worker works;
        # the same of the entities (a tier record per user, links, shares, ...)
        held: list[tuple[float, float]] = []
        entities: list[tuple[float, float]] = []

        def look() -> dict[str, float]:
            metrics = worker.metrics()
            for seen, stage in ((held, "users"), (entities, "entities")):
                keys = sum_metric(metrics, "linkwatch_state_keys", stage=stage)
                seen.append((keys, sum_metric(metrics, "linkwatch_state_cached", stage=stage)))
            return metrics

        def all_fired() -> bool:
            return sum_metric(look(), "linkwatch_triggers_total") >= len(expected_ids)

        assert wait_for(all_fired, timeout=180, interval=0.2), worker.tail_log()

        def all_recorded() -> bool:
            look()
            return all(
                len(run(read_topic(settings, topic))) >= sum(records[name].values())
                for name, topic in (
                    ("health", settings.topic_health),
                    ("profiles", settings.topic_profiles),
                )
            )

        assert wait_for(all_recorded, timeout=240, interval=0.5), worker.tail_log()
        time.sleep(1)  # anything extra would show up now
        metrics = worker.metrics()
        reads = sum_metric(metrics, "linkwatch_state_reads", stage="users")
        entity_reads = sum_metric(metrics, "linkwatch_state_reads", stage="entities")
        chunks = sum_metric(metrics, "linkwatch_catch_up_chunks_total")
        paused = sum_metric(metrics, "linkwatch_inputs_paused_seconds_total")
        health = run(read_topic(settings, settings.topic_health))
        profiles = run(read_topic(settings, settings.topic_profiles))
        assert worker.terminate(timeout=settings.shutdown_timeout + 5) == 0
    assert list(settings.data_dir.rglob("CURRENT"))  # RocksDB databases were really used
    most = max(users for users, _ in held)
    most_entities = max(keys for keys, _ in entities)
    print(
        f"users held at most {most:.0f}; (held, decoded): {held}; read back {reads:.0f}; "
        f"chunks of deadlines after a first {chunks:.0f}; entities held at most "
        f"{most_entities:.0f}, read back {entity_reads:.0f}; inputs paused {paused:.1f} s"
    )
    if cache_max:
        assert most > 400  # many more users than the caches hold...
        assert min(decoded for users, decoded in held if users == most) < most
        assert reads > 0  # ... so some were read back from RocksDB
        assert chunks > 0  # and more than 3 deadlines passed at once
        # The same of the entity stage's records.
        assert most_entities > 400
        assert min(decoded for keys, decoded in entities if keys == most_entities) < most_entities
        assert entity_reads > 0
        assert paused > 0  # the entity stage held more than 10 records: the inputs waited
    else:
        assert all(decoded == users for users, decoded in held)
        assert all(decoded == keys for keys, decoded in entities)
        assert reads == entity_reads == 0
        assert chunks == 0
        assert paused == 0
    # The entity stage decides as replay does, its records in memory or read back.
    assert Counter(canonical(orjson.loads(v)) for _, v in health) == records["health"]
    assert Counter(canonical(orjson.loads(v)) for _, v in profiles) == records["profiles"]
    ids = trigger_ids(run(read_topic(settings, settings.topic_triggers)))
    assert set(ids) == expected_ids
    assert len(ids) == len(expected_ids)


def test_a_worker_stopped_mid_stream_on_rocksdb_writes_its_states_and_exits_cleanly(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """Stopping, Faust closes the tables before its consumer's last commit. That commit's
    writes of what changed since the one before (entity records on rocksdb://, most often)
    then found their RocksDB databases closed and could not open them again ("lock hold by
    current process"): a crash on the way out. The worker now commits while the tables are
    open, and lets its partitions go before they close."""
    settings = kafka_settings.model_copy(
        update=FAST | {"store": "rocksdb://", "state_cache_max": 20, "commit_interval": 0.2}
    )
    lines = list(generate(users=4000, seed=29, start_ms=START, bad_ratio=0.0))
    run(prepare(settings))
    with WorkerProcess(settings, tmp_path) as worker:
        run(produce(settings, lines))

        def busy() -> bool:  # well into the records
            return sum_metric(worker.metrics(), "linkwatch_events_total") > len(lines) / 4

        assert wait_for(busy, timeout=120, interval=0.2), worker.tail_log()
        code = worker.terminate(timeout=settings.shutdown_timeout + 20)
        log = worker.log_path.read_text(errors="replace")
    assert "Crashed" not in log, worker.tail_log(80)
    assert "lock hold" not in log, worker.tail_log(80)
    assert code == 0, worker.tail_log(80)
