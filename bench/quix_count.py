"""Quix Streams' stateful count per key, for `bench/service.py`: the peer a Python user would
pick instead of Faust for this job. Runs in `.venv-quix` (`make bench` makes it), since Quix
Streams brings its own Kafka client (confluent-kafka / librdkafka).

    .venv-quix/bin/python bench/quix_count.py SPEC.json

SPEC.json gives `bootstrap` (host:port), `group`, `topics`, `expected` (records to count),
`state_dir` and `out` (a directory). The four input topics are read as one dataframe
(`concat`); each record is parsed as JSON and adds one to its key's count in Quix's RocksDB
state, which Quix backs with a changelog topic. At the first record it writes
`out/first.json`, at the `expected`-th `out/done.json` (wall and CPU time of each, and the
count); then it idles until it is stopped (SIGTERM), like the other contenders.

One shim: Quix derives its changelog topic's config from the input topics' `retention.ms`,
which Tansu does not report. Quix already defaults `retention.bytes` to -1 (infinite) when a
broker leaves it out (its comment names Azure Event Hub); `retention.ms` gets the same default.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from quixstreams import Application
from quixstreams.models.topics.manager import TopicManager
from quixstreams.models.topics.topic import Topic

_derive_topic_config = TopicManager.derive_topic_config.__func__  # type: ignore[attr-defined]


def _derive_with_default_retention(cls: type[TopicManager], topics: Iterable[Topic]) -> Any:
    topics = list(topics)
    for topic in topics:
        config = topic.broker_config
        if config is not None and "retention.ms" not in config.extra_config:
            config.extra_config["retention.ms"] = "-1"
    return _derive_topic_config(cls, topics)


TopicManager.derive_topic_config = classmethod(_derive_with_default_retention)  # type: ignore[assignment]


def mark(path: Path, count: int) -> None:
    """Write a progress mark atomically (the caller polls for the file)."""
    data = {"count": count, "wall": time.time(), "cpu": time.process_time()}
    partial = path.with_suffix(".tmp")
    partial.write_bytes(orjson.dumps(data))
    os.replace(partial, path)


def main() -> None:
    spec = orjson.loads(Path(sys.argv[1]).read_bytes())
    out = Path(spec["out"])
    expected = int(spec["expected"])
    app = Application(
        broker_address=spec["bootstrap"],
        consumer_group=spec["group"],
        auto_offset_reset="earliest",
        state_dir=spec["state_dir"],
        use_changelog_topics=True,
        loglevel="WARNING",
    )
    topics = [
        app.topic(name, key_deserializer="bytes", value_deserializer="json")
        for name in spec["topics"]
    ]
    sdf = app.dataframe(topics[0])
    for topic in topics[1:]:
        sdf = sdf.concat(app.dataframe(topic))
    seen = [0]

    def count(_value: Any, state: Any) -> None:
        state.set("count", state.get("count", 0) + 1)
        seen[0] += 1
        if seen[0] == 1:
            mark(out / "first.json", 1)
        if seen[0] == expected:
            mark(out / "done.json", expected)

    sdf.update(count, stateful=True)
    app.run()


if __name__ == "__main__":
    main()
