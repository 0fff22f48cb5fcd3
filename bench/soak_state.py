"""The state the soak's traffic should leave behind, without a broker: its endless simulated
populations (1,000 users each, 30 days of event time apart, as in the 15-minute soak of
tests/integration/test_faults.py) through one partition's engine and the entity stage, with a
live clock and no lag: each kind of event is a source of its own, as each topic is live.

    .venv/bin/python bench/soak_state.py [--events 600000] [--every 30000]

Prints the users and entities held every `--every` events: the plateau the live soak's
`linkwatch_state_keys` should level off near (live it holds more while its watermarks lag).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections import Counter

from linkwatch.codec import decode_event
from linkwatch.engine import JourneyEngine
from linkwatch.entities import build_entity_stage, derive_signals, features_of
from linkwatch.errors import RecordRejected
from linkwatch.journeys import load_journeys
from linkwatch.partition import PartitionProcessor
from linkwatch.produce import endless_traffic

SOAK_START = 946_771_200_000  # 2000-01-02, as the soak
DAY_MS = 86_400_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument("--every", type=int, default=30_000)
    parser.add_argument("--spacing-days", type=int, default=30)
    args = parser.parse_args()
    journeys = load_journeys()
    processor = PartitionProcessor(JourneyEngine(journeys))
    entities = build_entity_stage(journeys)
    features = features_of(journeys)
    starts = itertools.count(SOAK_START, args.spacing_days * DAY_MS)
    traffic = endless_traffic(
        seed=100, users=1000, bad_ratio=0.001, wall_clock_ms=lambda: next(starts)
    )
    # A clock far past every event time: nothing is rejected as from the future, and no
    # source ever falls silent (no lag), so the watermark is the slowest kind's newest time.
    clock = int(time.time() * 1000) + 100 * 365 * DAY_MS
    moved_to: int | None = None
    print(f"{'events':>9} {'users':>6} {'entities':>9}  entities by level")
    for count, raw in enumerate(itertools.islice(traffic, args.events), start=1):
        if count % args.every == 0:
            levels = Counter(key.split("|", 1)[0] for key in entities.store) if entities else {}
            held = len(entities.store) if entities else 0
            print(f"{count:9d} {len(processor.store):6d} {held:9d}  {dict(sorted(levels.items()))}")
        try:
            event = decode_event(raw)
            result = processor.process(event, event.kind, now_ms=clock)
        except RecordRejected:
            continue
        if entities is None:
            continue
        for sig in derive_signals(result.outputs, features):
            entities.offer(sig)
        watermark = processor.watermark
        if watermark is not None and watermark != moved_to:
            moved_to = watermark
            entities.run(watermark)


if __name__ == "__main__":
    main()
