"""Hot reload on a real worker: its journeys file is rewritten while it runs."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from linkwatch.produce import produce
from linkwatch.settings import Settings
from tests.integration.workers import WorkerProcess, run, sum_metric, wait_for

FAST = {"idle_timeout": "1s", "tick_interval": "200ms", "commit_interval": 0.5}

SETTINGS = """
[settings]
allowed_lateness = "1s"
"""

BROWSE = """
[[journey]]
name = "browse"

  [[journey.step]]
  name = "product"
  match = { kind = "click", page = "product" }

  [[journey.step]]
  name = "cart"
  match = { kind = "click", page = "cart" }
  within = "30m"
  cause = "indifferent"
"""

BUY = """
[[journey]]
name = "buy"

  [[journey.step]]
  name = "cart"
  match = { kind = "click", page = "cart" }

  [[journey.step]]
  name = "purchase"
  match = { kind = "purchase" }
  within = "30m"
  cause = "distrust"
"""


def click(user: str, page: str, ts: int) -> bytes:
    return orjson.dumps(
        {
            "kind": "click",
            "event_id": f"{user}-{page}",
            "user_id": user,
            "ts": ts,
            "channel": "web",
            "link_id": "l1",
            "url": f"https://shop.example/{page}",
            "page": page,
        }
    )


def browse_then_cart(user: str) -> list[bytes]:
    """Real-time clicks: a product page, then the cart a second later."""
    now = int(time.time() * 1000)
    return [click(user, "product", now), click(user, "cart", now + 1_000)]


def test_a_rewritten_journeys_file_is_picked_up_without_a_restart(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "journeys.toml"
    path.write_text(SETTINGS + BROWSE + BUY)
    settings = kafka_settings.model_copy(
        update={**FAST, "journeys_file": path, "reload_interval": 0.5}
    )
    with WorkerProcess(settings, tmp_path) as worker:

        def metric(name: str, **labels: str) -> float:
            return sum_metric(worker.metrics(), name, **labels)

        def log_lines(start: str) -> list[str]:
            text = worker.log_path.read_text(errors="replace")
            return [line for line in text.splitlines() if start in line]

        # Six users open `browse` (real-time: their 30 min budgets stay open), three `buy`.
        now = int(time.time() * 1000)
        opened = [click(f"b{i}", "product", now) for i in range(6)]
        opened += [click(f"c{i}", "cart", now) for i in range(3)]
        run(produce(settings, opened))
        started = {"browse": 6.0, "buy": 3.0}

        def all_started() -> bool:
            counts = {j: metric("linkwatch_journey_started_total", journey=j) for j in started}
            return counts == started

        assert wait_for(all_started, timeout=30, interval=0.5), worker.tail_log()

        # `browse` removed: its open instances end as retired, `buy` goes on.
        path.write_text(SETTINGS + BUY)

        def retired() -> bool:
            return metric("linkwatch_journey_retired_total", journey="browse") == 6

        assert wait_for(retired, timeout=15, interval=0.5), worker.tail_log()
        (reloaded,) = log_lines("journeys reloaded")
        assert (
            f"journeys reloaded from {path}: 1 journeys (added [], removed ['browse'], changed [])"
            in reloaded
        )
        assert metric("linkwatch_active_instances", journey="browse") == 0
        assert metric("linkwatch_active_instances", journey="buy") == 3
        assert metric("linkwatch_journey_retired_total", journey="buy") == 0

        # New events no longer start `browse`; `buy` starts as before.
        run(produce(settings, browse_then_cart("n1")))
        started["buy"] += 1
        assert wait_for(all_started, timeout=15, interval=0.5), worker.tail_log()

        # An invalid file is rejected with one clear line; the journeys in effect stay.
        path.write_text(SETTINGS + BUY.replace('within = "30m"', 'within = "soon"'))

        def rejected() -> bool:
            return bool(log_lines("journeys reload rejected"))

        assert wait_for(rejected, timeout=15, interval=0.5), worker.tail_log()
        time.sleep(1.5)  # three more polls of the same bad file: not logged again
        (line,) = log_lines("journeys reload rejected")
        assert f"journeys reload rejected: {path}: invalid journeys: " in line
        assert "journey[0] 'buy' → step[1] 'purchase' → within" in line
        assert "invalid duration 'soon'" in line
        run(produce(settings, browse_then_cart("n2")))
        started["buy"] += 1
        assert wait_for(all_started, timeout=15, interval=0.5), worker.tail_log()
        assert metric("linkwatch_journeys_reloads_total", outcome="applied") == 1
        assert metric("linkwatch_journeys_reloads_total", outcome="rejected") == 1
        assert worker.terminate(timeout=settings.shutdown_timeout + 5) == 0
