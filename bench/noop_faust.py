"""A no-op Faust agent for `bench/service.py`: counts the records of the input topics, nothing else.

    python bench/noop_faust.py SPEC.json

SPEC.json gives `broker` (kafka://host:port), `app_id`, `topics`, `partitions`, `expected`
(records to count), the LinkWatch worker's consumer-group timing (`session_timeout`,
`heartbeat_interval`, `request_timeout`, `commit_interval`), `datadir` and `out` (a directory).
The agent iterates `stream.events()` over raw bytes, exactly as the LinkWatch agent does, so the
difference between the two is LinkWatch's own work. At the first record it writes
`out/first.json`, at the `expected`-th `out/done.json` (wall and CPU time of each, and the
count); then it idles until it is stopped (SIGTERM), so the caller can read its /proc entry first.
"""

from __future__ import annotations

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

    @app.agent(topic, name="noop.count")
    async def count(stream: faust.StreamT[bytes]) -> None:
        async for _event in stream.events():
            seen[0] += 1
            n = seen[0]
            if n == 1:
                mark(out / "first.json", n)
            if n == expected:
                mark(out / "done.json", n)

    return app


def main() -> None:
    spec = orjson.loads(Path(sys.argv[1]).read_bytes())
    app = build(spec)
    level = os.environ.get("NOOP_LOGLEVEL", "WARNING")  # INFO shows Faust's start-up steps
    worker = faust.Worker(app, loglevel=level, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
