"""A million active users on the RocksDB store, with bounded memory: one partition's journeys
over a `CachedStore` on a real RocksDB database (rocksdict, as Faust's rocksdb:// store uses)
and its wake-up indexes on disk (`DiskWakeups`), as the worker runs them with
`LINKWATCH_STORE=rocksdb://`, against the same traffic with every state held decoded in a dict
and the wake-ups in memory (`--cache 0`).

    .venv/bin/python bench/million_users.py [--users 1000000] [--cache 50000]
    .venv/bin/python bench/million_users.py --cache 0      # every state in memory

Each user adds a product to the cart (synthetic clicks, one per user, spread over 20 minutes
of event time, in the daytime of the journeys' quiet-hours zone), which opens
`cart_to_purchase`: its checkout deadline is 30 minutes later, so after the last cart every
user is active. The states are written to the database every `--flush-every` events, as
the worker writes them at each offset commit. Then event time moves on in steps of one
second, as ticks move the worker's watermark, writing after each step, until every deadline
has passed: each user's drop-off fires once.

Prints events/s, the process's resident memory (VmRSS) as the users arrive, its peak
(VmHWM), the database's size on disk, and the drop-offs fired. Run each configuration in a
process of its own (the peak is per process). Not a test: nothing here asserts a size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from rocksdict import BlockBasedOptions, Cache, Options, Rdict

from linkwatch.codec import decode_event
from linkwatch.disk_wakeups import DiskWakeups
from linkwatch.engine import JourneyEngine
from linkwatch.journeys import load_journeys
from linkwatch.partition import PartitionProcessor
from linkwatch.store import cached_user_states
from linkwatch.suppression import Withheld
from linkwatch.triggers import Trigger
from proc_status import proc_status_mb

# 2024-11-22 02:00 UTC: 10:00 in Asia/Shanghai, the default quiet-hours zone, so drop-offs go
# out at their deadlines instead of waiting for the morning.
START_MS = 1_732_240_800_000
SPREAD_MS = 20 * 60_000
STEP_MS = 1_000


def proc_status(field: str) -> float:
    """A VmRSS / VmHWM figure of this process, in MiB."""
    return proc_status_mb("self", field) or float("nan")


def cart_event(n: int, users: int) -> bytes:
    return orjson.dumps(
        {
            "kind": "click",
            "event_id": f"cart-{n}",
            "user_id": f"user-{n:07d}",
            "ts": START_MS + n * SPREAD_MS // users,
            "channel": "app",
            "link_id": f"link-{n % 500}",
            "url": f"https://shop.example/cart?p={n % 5000}",
            "page": "cart",
        }
    )


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument(
        "--cache", type=int, default=50_000, help="states held decoded; 0: a dict holds all"
    )
    parser.add_argument("--flush-every", type=int, default=2_000)
    parser.add_argument("--report-every", type=int, default=100_000)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="linkwatch-million-"))
    db: Rdict | None = None
    store: Any
    indexes: dict[str, Any] = {}
    if args.cache:
        # As the worker opens each table partition's database (settings' defaults).
        options = Options(raw_mode=True)
        options.set_write_buffer_size(16 << 20)
        options.set_max_write_buffer_number(3)
        table_options = BlockBasedOptions()
        table_options.set_bloom_filter(3, block_based=True)
        table_options.set_block_cache(Cache(64 << 20))
        options.set_block_based_table_factory(table_options)
        db = Rdict(str(work / "states-0.db"), options=options)
        indexes = {
            "wakeups": DiskWakeups(work / "wakeups" / "deadlines"),
            "expiries": DiskWakeups(work / "wakeups" / "expiries"),
        }
        live_db = db

        store = cached_user_states(
            live_db, 0, read=live_db.get, scan=live_db.items, capacity=args.cache, size=0
        )
    else:
        store = {}
    processor = PartitionProcessor(JourneyEngine(load_journeys()), store, **indexes)
    flush = store.flush if args.cache else (lambda: 0)
    label = f"cache of {args.cache:,}" if args.cache else "every state in a dict"
    print(f"{args.users:,} users, {label}; RSS at start {proc_status('VmRSS'):.0f} MB")
    print(f"{'events':>10} {'users':>10} {'active':>10} {'RSS MB':>8} {'events/s':>9}")

    samples: list[dict[str, float]] = []
    started = time.perf_counter()
    for n in range(args.users):
        event = decode_event(cart_event(n, args.users))
        processor.process(event)
        if (n + 1) % args.flush_every == 0:
            flush()
        if (n + 1) % args.report_every == 0:
            rate = (n + 1) / (time.perf_counter() - started)
            active = len(store)
            sample = {"events": n + 1, "rss_mb": proc_status("VmRSS"), "events_per_s": rate}
            samples.append(sample)
            print(
                f"{n + 1:>10,} {len(store):>10,} {active:>10,} {sample['rss_mb']:>8.0f} "
                f"{rate:>9,.0f}"
            )
    flush()
    ingest_s = time.perf_counter() - started
    # Open, or its cart still buffered within the allowed lateness (the last 10 s).
    active_users = sum(1 for state in store.values() if state.instances or state.pending)
    rss_active = proc_status("VmRSS")
    peak_active = proc_status("VmHWM")
    disk = dir_size_mb(work)
    print(
        f"after the last cart: {active_users:,} users with an open journey; "
        f"RSS {rss_active:.0f} MB (peak {peak_active:.0f} MB); database {disk:.0f} MB on disk"
    )

    # What a restart or a rebalance costs the partition: its wake-up indexes rebuilt in one
    # pass over its states (the worker also counts open instances in a second pass).
    started_load = time.perf_counter()
    processor.rebuild_index()
    load_s = time.perf_counter() - started_load
    print(f"wake-up indexes rebuilt from the {len(store):,} states in {load_s:.1f} s")

    # Event time moves on as ticks move the worker's watermark, one second at a time.
    fired = 0
    dropoffs = 0
    withheld = 0  # the holdout's: decided, counted, not sent
    started_firing = time.perf_counter()
    end = START_MS + SPREAD_MS + 31 * 60_000 + processor.lateness_ms
    watermark = START_MS
    while watermark < end:
        watermark += STEP_MS
        for output in processor.advance_to(watermark):
            fired += 1
            trigger = output.record if isinstance(output, Withheld) else output
            if isinstance(trigger, Trigger) and trigger.missed_step == "checkout":
                dropoffs += 1
                withheld += isinstance(output, Withheld)
        flush()
    fire_s = time.perf_counter() - started_firing
    result = {
        "users": args.users,
        "cache": args.cache,
        "ingest_events_per_s": args.users / ingest_s,
        "active_users": active_users,
        "rss_mb_all_active": rss_active,
        "peak_rss_mb": proc_status("VmHWM"),
        "database_mb": disk,
        "rebuild_index_s": load_s,
        "checkout_dropoffs": dropoffs,
        "checkout_dropoffs_withheld": withheld,
        "outputs_fired": fired,
        "fire_s": fire_s,
        "reads_back": getattr(store, "reads", 0),
        "samples": samples,
    }
    print(
        f"deadlines: {dropoffs:,} checkout drop-offs ({withheld:,} of them withheld: holdout; "
        f"{fired:,} outputs) in {fire_s:.1f} s; "
        f"peak RSS {result['peak_rss_mb']:.0f} MB; states read back from RocksDB "
        f"{result['reads_back']:,}"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    processor.close()
    if db is not None:
        db.close()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
