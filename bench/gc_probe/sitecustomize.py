"""Garbage-collection probe for a worker the benches start (`bench/service.py --gc-probe`):
on PYTHONPATH, Python imports this at start-up. In a LinkWatch worker whose environment names
LW_BENCH_GC_LOG, it times every collection (`gc.callbacks`) and writes the totals there
as JSON every second. Elsewhere it does nothing."""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time

LOG = os.environ.get("LW_BENCH_GC_LOG")


def _probe(path: str) -> None:
    spent, count, longest = [0.0, 0.0, 0.0], [0, 0, 0], [0.0, 0.0, 0.0]
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took, generation = time.perf_counter() - started[0], info["generation"]
        spent[generation] += took
        count[generation] += 1
        longest[generation] = max(longest[generation], took)

    def write() -> None:
        while True:
            time.sleep(1)
            partial = path + ".tmp"
            with open(partial, "w") as out:
                json.dump(
                    {
                        "threshold": gc.get_threshold(),
                        "seconds": spent,
                        "collections": count,
                        "longest_s": longest,
                        "process_cpu_s": time.process_time(),
                    },
                    out,
                )
            os.replace(partial, path)

    gc.callbacks.append(timed)
    threading.Thread(target=write, name="gc-probe", daemon=True).start()


if LOG and "linkwatch.worker" in getattr(sys, "orig_argv", []):
    _probe(LOG)
