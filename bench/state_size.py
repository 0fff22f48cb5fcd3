"""Bytes of state per active (user, journey): what the states table holds, by part.

    .venv/bin/python bench/state_size.py [--events 400000] [--every 100000]

Real traffic (the REES46 slice in ../shared/data amplified into distinct populations, as
bench/engine.py; simulated when it is missing) goes through one partition's engine, as replay
runs it. Every `--every` events it encodes each held user's state as the worker writes it to
the states table (`dump_state`) and prints:

  users held, active (user, journey) instances, the table's bytes, and bytes per instance:
  all users' bytes / instances (the table's cost per active instance) and the bytes of users
  with an instance / their instances

and which parts of the state the bytes are in (instances, pending events, de-dup memory,
delivery memory, profile), each part encoded alone. Not a test: nothing here asserts a size.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
from collections import Counter
from pathlib import Path

from linkwatch.codec import decode_event
from linkwatch.datasets import amplify, rees46_events
from linkwatch.engine import JourneyEngine
from linkwatch.errors import RecordRejected
from linkwatch.journeys import load_journeys
from linkwatch.partition import PartitionProcessor
from linkwatch.simulate import generate
from linkwatch.state import UserState, dump_state

REES46 = Path(__file__).resolve().parents[2] / "shared" / "data" / "rees46_2019oct_head.csv"


def traffic(events: int) -> tuple[list[bytes], str]:
    if REES46.exists():
        base = list(rees46_events(REES46))
        copies = max(1, -(-events // len(base)))
        records = list(itertools.islice(amplify(base, copies), events))
        return records, f"REES46 head ({len(base):,} events) x {copies} populations"
    records = list(
        itertools.islice(generate(users=events // 3, seed=7, start_ms=1_732_233_600_000), events)
    )
    return records, "simulated traffic (REES46 not found)"


def parts(state: UserState) -> dict[str, int]:
    """Bytes of each part of a state, encoded alone as `dump_state` encodes it."""
    whole = len(dump_state(state))
    empty = state._replace(instances={}, pending=(), recent=(), awaiting={})
    sizes = {
        "instances": len(dump_state(state._replace(pending=(), recent=(), awaiting={})))
        - len(dump_state(empty)),
        "pending": len(dump_state(state._replace(instances={}, recent=(), awaiting={})))
        - len(dump_state(empty)),
        "recent (de-dup)": len(dump_state(state._replace(instances={}, pending=(), awaiting={})))
        - len(dump_state(empty)),
        "awaiting": len(dump_state(state._replace(instances={}, pending=(), recent=())))
        - len(dump_state(empty)),
    }
    sizes["delivery, profile, envelope"] = whole - sum(sizes.values())
    return sizes


def report(processor: PartitionProcessor, count: int) -> None:
    states = list(processor.store.values())
    instances = sum(len(s.instances) for s in states)
    sizes = [len(dump_state(s)) for s in states]
    with_instances = [n for s, n in zip(states, sizes, strict=True) if s.instances]
    total = sum(sizes)
    by_part: Counter[str] = Counter()
    for state in states:
        by_part.update(parts(state))
    per = total / instances if instances else float("nan")
    per_active = sum(with_instances) / instances if instances else float("nan")
    print(
        f"{count:>9,} {len(states):>8,} {instances:>10,} {total / 1e6:>9.2f} {per:>10.0f}"
        f" {per_active:>12.0f}  "
        + ", ".join(f"{part} {n / max(1, instances):.0f}" for part, n in by_part.most_common())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--every", type=int, default=100_000)
    args = parser.parse_args()
    records, source = traffic(args.events)
    print(f"data: {source}, {len(records):,} records")
    processor = PartitionProcessor(JourneyEngine(load_journeys()))
    print(
        f"{'events':>9} {'users':>8} {'instances':>10} {'MB':>9} {'B/instance':>10}"
        f" {'B/inst (act)':>12}  bytes per instance by part"
    )
    for count, raw in enumerate(records, start=1):
        with contextlib.suppress(RecordRejected):  # bad rows: replay dead-letters them
            processor.process(decode_event(raw))
        if count % args.every == 0 or count == len(records):
            report(processor, count)


if __name__ == "__main__":
    main()
