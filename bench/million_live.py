"""A million active users in one live worker on the RocksDB store: its memory while it holds
them, with `LINKWATCH_STATE_CACHE_MAX` bounding the states it keeps decoded, against the
same run with every state decoded (`--cache 0`).

    .venv/bin/python bench/million_live.py [--users 1000000] [--cache 50000] [--held-max N]
        [--fire-chunk 10000] [--no-tiers] [--no-fire] [--out F]

An embedded Tansu broker; the carts of bench/million_users.py (one per user, spread over 20
minutes of 2024 event time: each opens `cart_to_purchase`, whose checkout deadline is 30
minutes later) produced to the clicks topic (4 partitions) before the worker starts. One
worker, `LINKWATCH_STORE=rocksdb://`, consumes them from the start; its /metrics and its
resident memory (/proc, VmRSS) are sampled every 2 s. While the backlog drains the
partitions' watermarks follow the events, so no deadline passes; once it is drained and the
topics fall silent, the watermarks follow the clock (two years on) and every user's drop-off
fires at once. The run ends when every user's checkout drop-off has been decided
(`linkwatch_journey_dropped_off_total`: sent, or withheld for the holdout) and the triggers
counter has been still for 10 s, or with `--no-fire` once every cart is consumed.

Prints, for the phase in which the worker holds every user active and for the firing:
users held, states decoded in memory, states read back from RocksDB, RSS and peak RSS,
records/s. Not a test: nothing here asserts a size or a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

from linkwatch.broker import EmbeddedBroker, process_cpu_seconds
from linkwatch.journeys import load_journeys
from linkwatch.produce import produce
from linkwatch.settings import Settings
from million_users import cart_event
from proc_status import proc_status_mb
from service import (
    RECORDS,
    Child,
    free_port,
    new_tag,
    proc_peak_rss_mb,
    scrape,
    total,
    worker_env,
)

PARTITIONS = 4
SAMPLE_EVERY = 2.0


def tiers_behind(metrics: dict[str, float]) -> float | None:
    """The entity stage's highest level's watermark lag minus the journeys' largest."""
    journeys = [v for k, v in metrics.items() if k.startswith("linkwatch_watermark_lag_seconds{")]
    levels = {
        int(key.split('level="')[1].split('"')[0]): value
        for key, value in metrics.items()
        if key.startswith("linkwatch_entity_watermark_lag_seconds{") and value == value
    }
    if not journeys or not levels:
        return None
    return round(levels[max(levels)] - max(journeys), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--cache", type=int, default=50_000, help="LINKWATCH_STATE_CACHE_MAX")
    parser.add_argument(
        "--held-max",
        type=int,
        default=Settings.model_fields["entity_held_max"].default,
        help="LINKWATCH_ENTITY_HELD_MAX",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--no-fire", action="store_true", help="stop once every cart is consumed")
    parser.add_argument(
        "--fire-chunk",
        type=int,
        default=Settings.model_fields["fire_chunk"].default,
        help="LINKWATCH_FIRE_CHUNK (0: every deadline due at once)",
    )
    parser.add_argument(
        "--no-tiers",
        action="store_true",
        help="the default journeys without lifecycle tiers (whose per-user records the "
        "entity stage holds in memory)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linkwatch-million-live-"))
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(log_dir=work))
        tag = new_tag("mil")
        settings = Settings(brokers=broker.url, app_id="bench").namespaced(
            tag,
            partitions=PARTITIONS,
            data_dir=work / "state",
            log_format="text",
            store="rocksdb://",
            state_cache_max=args.cache,
            entity_held_max=args.held_max,
            fire_chunk=args.fire_chunk,
            web_port=free_port(),
        )
        if args.no_tiers:
            default = (files("linkwatch") / "journeys.toml").read_text()
            journeys = work / "journeys.toml"
            journeys.write_text(
                default.replace("[tiers]\nenabled = true", "[tiers]\nenabled = false")
            )
            assert load_journeys(journeys).tiers.enabled is False
            settings = settings.model_copy(update={"journeys_file": journeys})
        started = time.monotonic()
        records = (cart_event(n, args.users) for n in range(args.users))
        sent = asyncio.run(produce(settings, records))
        print(f"{sent:,} carts produced in {time.monotonic() - started:.0f} s", flush=True)
        worker = Child(
            "worker",
            [sys.executable, "-m", "linkwatch.worker"],
            worker_env(settings),
            work / "worker.log",
        )
        worker.start()
        stack.callback(worker.stop)
        url = f"http://127.0.0.1:{settings.web_port}"
        samples: list[dict[str, Any]] = []
        consumed_at: float | None = None
        held_peak: dict[str, Any] | None = None
        last_triggers, still_since = -1.0, time.monotonic()
        began = time.monotonic()
        print(
            f"{'s':>6} {'records':>10} {'users':>10} {'decoded':>8} {'entities':>9} "
            f"{'read back':>10} {'held':>8} "
            f"{'triggers':>9} {'withheld':>9} {'behind s':>9} {'RSS MB':>7}",
            flush=True,
        )
        while True:
            if not worker.alive:
                raise worker.failure("exited")
            metrics = scrape(url)
            now = time.monotonic() - began
            if metrics is None:  # not up yet, or too busy to answer within 2 s
                if now > args.timeout:
                    raise worker.failure(f"not done in {args.timeout:.0f} s")
                time.sleep(SAMPLE_EVERY)
                continue
            sample = {
                "s": round(now, 1),
                "records": total(metrics, *RECORDS),
                "users": metrics.get('linkwatch_state_keys{stage="users"}', 0.0),
                "decoded": total(metrics, "linkwatch_state_cached"),
                "entities": metrics.get('linkwatch_state_keys{stage="entities"}', 0.0),
                "reads": total(metrics, "linkwatch_state_reads"),
                # Entity records that cannot be let go, and how long the inputs waited for them.
                "held": metrics.get("linkwatch_entity_records_held", 0.0),
                "paused_s": metrics.get("linkwatch_inputs_paused_seconds_total", 0.0),
                "triggers": total(metrics, "linkwatch_triggers_total"),
                "withheld": total(metrics, "linkwatch_triggers_withheld_total"),
                # Decided (sent or withheld): one per user once their deadline has passed.
                "checkout_dropoffs": sum(
                    value
                    for key, value in metrics.items()
                    if key.startswith("linkwatch_journey_dropped_off_total{")
                    and 'journey="cart_to_purchase"' in key
                    and 'step="checkout"' in key
                ),
                # How far the entity stage's last level (the tier records) is behind the
                # journeys' most behind partition, in event-time seconds.
                "tiers_behind_s": tiers_behind(metrics),
                "rss_mb": proc_status_mb(worker.pid, "VmRSS"),
                "cpu_s": process_cpu_seconds(worker.pid),
            }
            samples.append(sample)
            if len(samples) % 15 == 1:
                print(
                    f"{now:>6.0f} {sample['records']:>10,.0f} {sample['users']:>10,.0f} "
                    f"{sample['decoded']:>8,.0f} {sample['entities']:>9,.0f} "
                    f"{sample['reads']:>10,.0f} {sample['held']:>8,.0f} "
                    f"{sample['triggers']:>9,.0f} {sample['withheld']:>9,.0f} "
                    f"{sample['tiers_behind_s'] or 0:>9,.0f} {sample['rss_mb'] or 0:>7.0f}",
                    flush=True,
                )
            if consumed_at is None and sample["records"] >= sent:
                consumed_at = now
                held_peak = {"peak_rss_mb": proc_peak_rss_mb(worker.pid), **sample}
            if consumed_at is not None and args.no_fire:
                break
            if sample["triggers"] != last_triggers:
                last_triggers, still_since = sample["triggers"], time.monotonic()
            decided = sample["checkout_dropoffs"]
            if consumed_at is not None and decided >= sent and time.monotonic() - still_since > 10:
                break
            if now > args.timeout:
                raise worker.failure(f"not done in {args.timeout:.0f} s")
            time.sleep(SAMPLE_EVERY)
        end = {"peak_rss_mb": proc_peak_rss_mb(worker.pid), **samples[-1]}
        worker.stop()
    assert held_peak is not None
    assert consumed_at is not None
    first = next(s for s in samples if s["records"] > 0)
    result = {
        "users": args.users,
        "cache": args.cache,
        "held_max": args.held_max,
        "fire_chunk": args.fire_chunk,
        "tiers": not args.no_tiers,
        "records_per_s": (held_peak["records"] - first["records"]) / (consumed_at - first["s"]),
        "held_peak": max(sample["held"] for sample in samples),
        "paused_s": end["paused_s"],
        "all_consumed": held_peak,
        "end": end,
        "samples": samples,
    }
    print(
        f"all {sent:,} carts consumed at {consumed_at:.0f} s "
        f"({result['records_per_s']:,.0f} records/s): {held_peak['users']:,.0f} users held, "
        f"{held_peak['decoded']:,.0f} decoded, RSS {held_peak['rss_mb']:.0f} MB, "
        f"peak {held_peak['peak_rss_mb']:.0f} MB"
    )
    print(
        f"entity records held that cannot be let go: at most {result['held_peak']:,.0f} "
        f"(bound {args.held_max:,}); the input topics paused {end['paused_s']:,.0f} s for them"
    )
    print(
        f"end: {end['triggers']:,.0f} triggers, {end['withheld']:,.0f} withheld, "
        f"{end['users']:,.0f} users held, {end['decoded']:,.0f} decoded, "
        f"{end['reads']:,.0f} read back; RSS {end['rss_mb']:.0f} MB, "
        f"peak {end['peak_rss_mb']:.0f} MB"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
