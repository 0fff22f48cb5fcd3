"""Plain Faust agents for `bench/service.py`: the peers the LinkWatch worker is measured against.

    python bench/noop_faust.py SPEC.json

SPEC.json gives `broker` (kafka://host:port), `app_id`, `topics`, `partitions`, `expected`
(records to count), the LinkWatch worker's consumer-group timing (`session_timeout`,
`heartbeat_interval`, `request_timeout`, `commit_interval`), `datadir` and `out` (a directory),
and optionally `loop` (`asyncio`, the default, or `uvloop`) and `mode`:

  noop   iterate `stream.events()` over raw bytes, as the LinkWatch agent does, and count: the
         difference between the two is LinkWatch's own work (the default)
  take   `stream.take(2000, within=0.1)`: Faust's own batching of the agent loop
  table  the naive stateful agent: parse each record (orjson) and add one to a Table entry
         keyed by its user, so every record writes the table and its changelog

At the first record it writes `out/first.json`, at the `expected`-th `out/done.json` (wall and
CPU time of each, and the count); then it idles until it is stopped (SIGTERM), so the caller can
read its /proc entry first.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import faust
import orjson

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


def mark(path: Path, count: int) -> None:
    """Write a progress mark atomically (the caller polls for the file)."""
    data = {"count": count, "wall": time.time(), "cpu": time.process_time()}
    partial = path.with_suffix(".tmp")
    partial.write_bytes(orjson.dumps(data))
    os.replace(partial, path)


def build(spec: dict[str, Any]) -> faust.App:
    app = faust.App(
        spec["app_id"],
        broker=spec["broker"],
        store="memory://",
        datadir=spec["datadir"],
        topic_partitions=spec["partitions"],
        topic_replication_factor=1,
        web_enabled=False,
        # The worker's consumer-group timing (Tansu holds a join for about half the session
        # timeout, and Faust's default session timeout is 60 s).
        broker_session_timeout=spec["session_timeout"],
        broker_heartbeat_interval=spec["heartbeat_interval"],
        broker_request_timeout=spec["request_timeout"],
        broker_commit_interval=spec["commit_interval"],
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
        table_standby_replicas=0,
    )
    topic = app.topic(*spec["topics"], **RAW)
    out = Path(spec["out"])
    expected = int(spec["expected"])
    seen = [0]

    def counted(records: int) -> None:
        before = seen[0]
        seen[0] += records
        if before == 0:
            mark(out / "first.json", seen[0])
        if before < expected <= seen[0]:
            mark(out / "done.json", seen[0])

    mode = spec.get("mode", "noop")
    if mode == "noop":

        @app.agent(topic, name="noop.count")
        async def count(stream: faust.StreamT[bytes]) -> None:
            async for _event in stream.events():
                counted(1)

    elif mode == "take":

        @app.agent(topic, name="take.count")
        async def count_batches(stream: faust.StreamT[bytes]) -> None:
            async for batch in stream.take(2000, within=0.1):
                counted(len(batch))

    elif mode == "table":
        counts = app.Table("counts", default=int, partitions=spec["partitions"])

        @app.agent(topic, name="table.count")
        async def count_per_user(stream: faust.StreamT[bytes]) -> None:
            async for value in stream:
                try:
                    record = orjson.loads(value)
                except orjson.JSONDecodeError:
                    record = None
                user = record.get("user_id") if isinstance(record, dict) else None
                counts[str(user)] += 1
                counted(1)

    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return app


def main() -> None:
    spec = orjson.loads(Path(sys.argv[1]).read_bytes())
    if spec.get("loop", "asyncio") == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = build(spec)
    level = os.environ.get("NOOP_LOGLEVEL", "WARNING")  # INFO shows Faust's start-up steps
    worker = faust.Worker(app, loglevel=level, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
