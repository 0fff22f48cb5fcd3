"""A LinkWatch worker that records where each latency probe's time goes, for diagnosis.

    TRACE_WORKER_DIR=DIR python bench/trace_worker.py      # the worker, traced
    python bench/trace_worker.py --analyse DIR              # what it found

`bench/service.py --trace-worker DIR` runs its latency worker this way and prints the
analysis. The worker is the real one (`linkwatch.worker.main`); the tracing wraps aiokafka's
fetcher, Faust's drain loop and the journeys agent's batches from outside, so nothing of it
is in the product. For each probe (a record whose value holds `-probe-`) it times:

- fetch: the record's timestamp (sent) -> its fetch response parsed by aiokafka;
- buffered: -> aiokafka hands it to Faust (`fetched_records`);
- to the loop: -> Faust's drain loop, in the event loop, takes it;
- delivered: -> the journeys agent's stream takes it (`time_in`);
- batched: -> its batch starts;
- handled: -> the batch's outputs are sent.

It also samples the event loop: a thread posts a callback every 5 ms and, while it waits to
run, records the main thread's stack; waits over 30 ms are the loop's stalls, with the code
that held it. Tracing costs CPU: the figures are for finding the wait, not for reporting.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from nearest_rank import nearest_rank  # bench/, beside this script

PROBE = b"-probe-"
STALL_MS = 30.0


def _now() -> float:
    return time.time() * 1000


class Trace:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.arrivals: list[tuple[str, int, int, float]] = []  # topic, partition, from, at
        self.fetches: list[tuple[float, float, list[tuple[str, int]]]] = []
        self.buffered: dict[str, float] = {}  # "topic/partition/offset" -> at
        self.to_loop: dict[str, float] = {}
        self.drains: list[tuple[float, float, int]] = []  # start, end, records
        self.probes: list[dict[str, Any]] = []
        self.stalls: list[dict[str, Any]] = []

    def dump(self) -> None:
        data = {k: v for k, v in vars(self).items() if k != "directory"}
        (self.directory / "trace.json").write_text(json.dumps(data))


def _key(topic: str, partition: int, offset: int) -> str:
    return f"{topic}/{partition}/{offset}"


def install(trace: Trace) -> None:
    import aiokafka.consumer.fetcher as fetcher
    import faust.transport.consumer as faust_consumer

    from linkwatch import service

    records_init = fetcher.PartitionRecords.__init__

    def partition_records(self: Any, tp: Any, records: Any, aborted: Any, offset: int,
                          *args: Any, **kwargs: Any) -> None:  # fmt: skip
        trace.arrivals.append((tp.topic, tp.partition, offset, _now()))
        records_init(self, tp, records, aborted, offset, *args, **kwargs)

    fetcher.PartitionRecords.__init__ = partition_records  # type: ignore[method-assign]

    fetch_request = fetcher.Fetcher._proc_fetch_request

    async def proc_fetch_request(self: Any, assignment: Any, node_id: Any, request: Any) -> Any:
        start = _now()
        try:
            return await fetch_request(self, assignment, node_id, request)
        finally:
            tps = [(t, p[0]) for t, ps in request._topics for p in ps]
            trace.fetches.append((start, _now(), tps))

    fetcher.Fetcher._proc_fetch_request = proc_fetch_request  # type: ignore[method-assign]

    fetched_records = fetcher.Fetcher.fetched_records

    async def fetched(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await fetched_records(self, *args, **kwargs)
        at = _now()
        for tp, messages in result.items():
            for m in messages:
                if m.value and PROBE in m.value:
                    trace.buffered[_key(tp.topic, tp.partition, m.offset)] = at
        return result

    fetcher.Fetcher.fetched_records = fetched  # type: ignore[method-assign]

    getmany = faust_consumer.Consumer.getmany

    async def drain(self: Any, timeout: float) -> Any:
        start, count = None, 0
        async for tp, message in getmany(self, timeout):
            at = _now()
            start = start or at
            count += 1
            if message.value and PROBE in message.value:
                trace.to_loop[_key(tp.topic, tp.partition, message.offset)] = at
            yield tp, message
        if start is not None:
            trace.drains.append((start, _now(), count))

    faust_consumer.Consumer.getmany = drain  # type: ignore[method-assign,assignment]

    on_batch = service.LiveJourneys._on_batch

    async def traced_batch(self: Any, events: Any) -> None:
        start = _now()
        probes = []
        for event in events:
            m = event.message
            if m.value and PROBE in m.value:
                time_in = getattr(m, "time_in", None)
                probes.append(
                    {
                        "key": _key(m.topic, m.partition, m.offset),
                        "sent": m.timestamp * 1000,
                        "delivered": None
                        if time_in is None
                        else _now() - (time.monotonic() - time_in) * 1000,
                        "batched": start,
                        "batch_size": len(events),
                    }
                )
        await on_batch(self, events)
        done = _now()
        for probe in probes:
            probe["handled"] = done
        trace.probes.extend(probes)

    service.LiveJourneys._on_batch = traced_batch  # type: ignore[method-assign]

    create_app = service.create_app

    def traced_app(*args: Any, **kwargs: Any) -> Any:
        linkwatch = create_app(*args, **kwargs)

        async def start_sampler() -> None:
            loop = asyncio.get_running_loop()
            main = threading.main_thread().ident
            threading.Thread(target=_sample, args=(trace, loop, main), daemon=True).start()

        linkwatch.app.task(start_sampler)
        return linkwatch

    service.create_app = traced_app  # type: ignore[assignment]


def _sample(trace: Trace, loop: asyncio.AbstractEventLoop, main: int | None) -> None:
    last_dump = time.monotonic()
    while True:
        ran = threading.Event()
        start = time.perf_counter()
        loop.call_soon_threadsafe(ran.set)
        stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
        while not ran.wait(0.003):
            frame = sys._current_frames().get(main or 0)
            if frame is not None:
                stack = traceback.extract_stack(frame)[-14:]
                stacks[tuple(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in stack)] += 1
        waited = (time.perf_counter() - start) * 1000
        if waited > STALL_MS:
            top = stacks.most_common(1)
            stack = list(top[0][0]) if top else []
            trace.stalls.append({"at": _now(), "ms": waited, "stack": stack})
        if time.monotonic() - last_dump > 5:
            last_dump = time.monotonic()
            trace.dump()
        time.sleep(0.005)


# -- analysis ----------------------------------------------------------------------------------


def _percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    p50, p90, p99 = (nearest_rank(ordered, q) for q in (0.5, 0.9, 0.99))
    return f"p50 {p50:5.0f}  p90 {p90:5.0f}  p99 {p99:5.0f}  max {ordered[-1]:5.0f}"


def analyse(directory: Path) -> dict[str, Any]:
    data = json.loads((directory / "trace.json").read_text())
    fetched_from: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for topic, partition, offset, at in data["arrivals"]:
        fetched_from.setdefault((topic, partition), []).append((offset, at))
    stages: dict[str, list[float]] = {
        name: [] for name in ("fetch", "buffered", "to the loop", "delivered", "batched", "handled")
    }
    unfetched: list[float] = []  # a slow fetch: how long fetches went by without its partition
    for probe in data["probes"]:
        topic, partition, offset = probe["key"].rsplit("/", 2)
        tp = (topic, int(partition))
        before = [(o, at) for o, at in fetched_from.get(tp, []) if o <= int(offset)]
        times = [
            probe["sent"],
            max(before)[1] if before else None,
            data["buffered"].get(probe["key"]),
            data["to_loop"].get(probe["key"]),
            probe["delivered"],
            probe["batched"],
            probe["handled"],
        ]
        if None in times:
            continue
        for name, a, b in zip(stages, times, times[1:], strict=False):
            stages[name].append(b - a)
        skipped = [
            end - start
            for start, end, tps in data["fetches"]
            if times[0] <= start and end <= times[1] and [topic, int(partition)] not in tps
        ]
        unfetched.append(sum(skipped))
    stall_ms = [s["ms"] for s in data["stalls"]]
    by_place = collections.Counter()
    for stall in data["stalls"]:
        place = next((f for f in reversed(stall["stack"]) if f.split(":")[0] in _OURS), "elsewhere")
        by_place[place] += stall["ms"]
    return {
        "probes": len(stages["fetch"]),
        "stages_ms": {name: _percentiles(values) for name, values in stages.items()},
        "fetches_without_the_probe_s_partition_ms": _percentiles(unfetched),
        "drain_records": _percentiles([n for _, _, n in data["drains"]]),
        "drain_ms": _percentiles([end - start for start, end, _ in data["drains"]]),
        "stalls": {"count": len(stall_ms), "ms": _percentiles(stall_ms)},
        "stall_ms_by_place": dict(by_place.most_common(8)),
    }


_OURS = {path.name for path in (Path(__file__).resolve().parents[1] / "src/linkwatch").glob("*.py")}


def print_analysis(result: dict[str, Any]) -> None:
    print(f"worker trace: {result['probes']} probes; ms from the previous stage")
    for name, line in result["stages_ms"].items():
        print(f"  {name:<14}{line}")
    print(f"  fetches without the probe's partition before its fetch: "
          f"{result['fetches_without_the_probe_s_partition_ms']}")  # fmt: skip
    print(f"  Faust drains: records {result['drain_records']}; ms {result['drain_ms']}")
    stalls = result["stalls"]
    print(f"  event loop stalls > {STALL_MS:.0f} ms: {stalls['count']}, {stalls['ms']}")
    for place, ms in result["stall_ms_by_place"].items():
        print(f"    {ms:7.0f} ms in stalls at {place}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--analyse", type=Path, help="print what a traced worker found in DIR")
    args = parser.parse_args()
    if args.analyse:
        print_analysis(analyse(args.analyse))
        return
    directory = Path(os.environ["TRACE_WORKER_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    trace = Trace(directory)
    install(trace)
    atexit.register(trace.dump)
    from linkwatch.worker import main as worker_main

    worker_main()


if __name__ == "__main__":
    main()
