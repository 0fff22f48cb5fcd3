"""Replay throughput on one core, beside the floor of the job, in the same run.

The floor is what any Python consumer of these records must do at least: read the line, parse
it with orjson and update a dict keyed by user. `linkwatch replay` does that plus validation,
de-duplication, event-time ordering, journey matching and deadlines.

    .venv/bin/python bench/engine.py [--copies 12] [--repeat 3]

Data: the real REES46 clickstream slice in ../shared/data, amplified into distinct user
populations interleaved in event time (falls back to simulated traffic when it is missing).
Prints a table and writes bench/results/engine.json. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from linkwatch.datasets import amplify, rees46_events
from linkwatch.journeys import JourneySet, load_journeys
from linkwatch.replay import replay_lines, tune_gc_for_throughput
from linkwatch.simulate import generate

ROOT = Path(__file__).resolve().parents[1]
REES46 = ROOT.parent / "shared" / "data" / "rees46_2019oct_head.csv"
RESULTS = ROOT / "bench" / "results" / "engine.json"


def build_data(copies: int, directory: Path) -> tuple[Path, str]:
    if REES46.exists():
        records = list(rees46_events(REES46))
        source = f"REES46 2019-Oct head ({len(records):,} events) x {copies} populations"
        lines = amplify(records, copies)
    else:
        source = f"simulated traffic, {copies * 1000} users (REES46 not found at {REES46})"
        lines = generate(users=copies * 1000, start_ms=1_732_233_600_000, bad_ratio=0.0)
    path = directory / "events.jsonl"
    with path.open("wb") as out:
        for line in lines:
            out.write(line + b"\n")
    return path, source


def floor(path: Path) -> int:
    """orjson parse + dict update per line: the least work any consumer does."""
    latest: dict[str, Any] = {}
    count = 0
    with path.open("rb") as lines:
        for line in lines:
            record = orjson.loads(line)
            latest[record["user_id"]] = record
            count += 1
    return count


def journeys_only() -> JourneySet:
    """The default journeys with every analysis beyond them switched off: what they cost."""
    journeys = load_journeys()
    return replace(
        journeys,
        retention=replace(journeys.retention, enabled=False),
        fake_traffic=replace(journeys.fake_traffic, enabled=False),
        links=replace(journeys.links, enabled=False),
        communities=replace(journeys.communities, enabled=False),
        fission=replace(journeys.fission, enabled=False),
        tiers=replace(journeys.tiers, enabled=False),
    )


def replay(path: Path, journeys: JourneySet | None = None) -> int:
    journeys = journeys or load_journeys()
    sink = open(os.devnull, "wb")  # noqa: SIM115 - closed below; triggers are serialised for real
    with path.open("rb") as lines, sink:
        result = replay_lines(
            lines,
            journeys,
            source_name=str(path),
            on_trigger=lambda t: sink.write(orjson.dumps(t.model_dump(mode="json")) + b"\n"),
            close_open=True,
        )
    return result.report.read


def measure(run: Callable[[Path], int], path: Path, repeat: int) -> dict[str, float]:
    best: dict[str, float] = {}
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        events = run(path)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if not best or cpu < best["cpu_s"]:
            best = {"events": events, "wall_s": wall, "cpu_s": cpu, "events_per_s": events / cpu}
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    tune_gc_for_throughput()  # the same GC settings for both contenders
    with tempfile.TemporaryDirectory() as tmp:
        path, source = build_data(args.copies, Path(tmp))
        size = path.stat().st_size
        results = {
            "floor (orjson + dict update)": measure(floor, path, args.repeat),
            "linkwatch replay": measure(replay, path, args.repeat),
            "linkwatch replay, journeys only": measure(
                lambda p: replay(p, journeys_only()), path, args.repeat
            ),
        }
    floor_rate = results["floor (orjson + dict update)"]["events_per_s"]
    print(f"data: {source}; {size / 1e6:.1f} MB")
    print(f"{'contender':<32}{'events':>10}{'cpu s':>8}{'events/s':>12}{'x floor':>9}")
    for name, r in results.items():
        print(
            f"{name:<32}{r['events']:>10,.0f}{r['cpu_s']:>8.2f}{r['events_per_s']:>12,.0f}"
            f"{r['events_per_s'] / floor_rate:>9.3f}"
        )
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_rss_mb:.0f} MB; python {platform.python_version()}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_bytes(
        orjson.dumps(
            {
                "data": source,
                "bytes": size,
                "results": results,
                "ratio_to_floor": results["linkwatch replay"]["events_per_s"] / floor_rate,
                "peak_rss_mb": round(peak_rss_mb),
                "python": platform.python_version(),
                "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            },
            option=orjson.OPT_INDENT_2,
        )
        + b"\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
