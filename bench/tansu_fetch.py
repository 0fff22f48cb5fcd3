"""The embedded broker's cost per fetch as a partition's log grows.

Tansu 0.6.0's memory engine keeps each produced batch as one object and, on every fetch that
has records to return, lists every object of the partition to find where to start. A fetch
then costs broker CPU in proportion to the batches stored in the partition, and a long run at
a steady rate (many small batches) slows the broker down over time: this measures by how much.

    .venv/bin/python bench/tansu_fetch.py [--steps 0,20000,40000,80000] [--fetches 200]

For each log size it prints the broker CPU per fetch of one new record at the end of the log
(what a caught-up consumer does under steady traffic).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from linkwatch.broker import EmbeddedBroker, process_cpu_seconds

TOPIC = "fetch-cost"


async def measure(steps: list[int], fetches: int) -> list[dict[str, float]]:
    results = []
    with EmbeddedBroker() as broker:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(TOPIC, 1, 1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=100)
        await producer.start()
        await consumer.start()
        tp = TopicPartition(TOPIC, 0)
        consumer.assign([tp])
        stored = 0
        try:
            for target in steps:
                # One record per batch, as a producer at a low steady rate sends them.
                while stored < target:
                    await (await producer.send(TOPIC, b"x" * 100, partition=0))
                    stored += 1
                await consumer.seek_to_end(tp)
                cpu_before = process_cpu_seconds(broker.pid) or 0.0
                began = time.monotonic()
                for _ in range(fetches):
                    await (await producer.send(TOPIC, b"x" * 100, partition=0))
                    stored += 1
                    await consumer.getone()
                elapsed = time.monotonic() - began
                cpu = (process_cpu_seconds(broker.pid) or 0.0) - cpu_before
                row = {
                    "batches_stored": float(target),
                    "broker_cpu_ms_per_fetch": 1000 * cpu / fetches,
                    "round_trip_ms": 1000 * elapsed / fetches,
                }
                results.append(row)
                cpu_ms, trip_ms = row["broker_cpu_ms_per_fetch"], row["round_trip_ms"]
                print(
                    f"{target:8d} batches stored: broker CPU {cpu_ms:.2f} ms per produce+fetch"
                    f" of one record, round trip {trip_ms:.2f} ms",
                    flush=True,
                )
        finally:
            await consumer.stop()
            await producer.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="0,20000,40000,80000")
    parser.add_argument("--fetches", type=int, default=200)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    steps = [int(step) for step in args.steps.split(",")]
    results = asyncio.run(measure(steps, args.fetches))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
