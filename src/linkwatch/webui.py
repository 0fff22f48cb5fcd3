"""The live funnel page (`/ui`): what the worker's web server gives the browser.

The page itself is static (`linkwatch/ui/`: HTML, plain JS, CSS, shipped in the package, no
CDN). It polls `/ui/data.json`, built here from this worker's in-memory state:

- counters and gauges read from the same Prometheus registry `/metrics` serves, so the page
  and `/metrics` cannot disagree;
- the last triggers and resolutions this worker published (a bounded deque);
- the links and campaigns currently broken, from the link alerts it published.

Like `/metrics`, it covers this worker's partitions only, and starts empty on a restart.
User ids appear in the recent triggers only: that is whom an operator would look up.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import cache
from importlib import resources
from typing import Any, Final, get_args

import orjson
from prometheus_client import CollectorRegistry

from linkwatch.events import format_ts
from linkwatch.journeys import JourneySet
from linkwatch.links import LinkAlert
from linkwatch.signals import Published
from linkwatch.triggers import DROPOFF_CAUSES, Resolution, Trigger, TriggerType

RECENT: Final = 25  # triggers and resolutions kept for the page, newest first
MAX_BROKEN: Final = 200  # broken links kept; beyond that the oldest give way

# The browser may load nothing from anywhere but this server, and run no inline script.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ASSETS: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
DATA_HEADERS: Final = {
    **SECURITY_HEADERS,
    "Content-Type": "application/json",
    "Cache-Control": "no-store",  # always live
}


@cache
def asset(name: str) -> tuple[bytes, dict[str, str]]:
    """A file of the page (body, response headers), read once from the package."""
    body = resources.files("linkwatch").joinpath("ui", name).read_bytes()
    return body, {**SECURITY_HEADERS, "Content-Type": ASSETS[name]}


class WebUI:
    """What the page shows. The service feeds it what it publishes; `data()` is the JSON."""

    def __init__(self, registry: CollectorRegistry, journeys: Callable[[], JourneySet]) -> None:
        self.registry = registry
        self.journeys = journeys  # the running ones: they change on a hot reload
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.broken: dict[tuple[str, str], dict[str, Any]] = {}  # (kind, id) → its alert

    # -- fed by the service, after delivery -----------------------------------------------

    def on_outputs(self, outputs: Iterable[object]) -> None:
        """Journey outputs just published: keep the triggers and resolutions."""
        for out in outputs:
            if isinstance(out, Trigger | Resolution):
                self.recent.appendleft(_recent_row(out))

    def on_entity_outputs(self, outputs: Iterable[object]) -> None:
        """Entity outputs just published: follow link alerts (broken, then recovered)."""
        for out in outputs:
            if isinstance(out, Published) and isinstance(out.record, LinkAlert):
                alert = out.record
                key = (alert.entity_kind, alert.entity_id)
                if alert.status == "recovered":
                    self.broken.pop(key, None)
                    continue
                self.broken.pop(key, None)  # re-inserted last: dicts keep insertion order
                self.broken[key] = _broken_row(alert)
                if len(self.broken) > MAX_BROKEN:
                    del self.broken[next(iter(self.broken))]

    # -- read by the page ------------------------------------------------------------------

    def data(self) -> bytes:
        return orjson.dumps(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        values = _values(self.registry)

        def total(name: str, **labels: str) -> int:
            wanted = set(labels.items())
            return round(sum(v for got, v in values.get(name, []) if wanted <= set(got.items())))

        def by(name: str, label: str, keys: Iterable[str] = ()) -> dict[str, int]:
            counts = dict.fromkeys(keys, 0)
            for labels, value in values.get(name, []):
                counts[labels[label]] = counts.get(labels[label], 0) + round(value)
            return counts

        journeys = [
            {
                "name": journey.name,
                "description": journey.description,
                "started": total("linkwatch_journey_started_total", journey=journey.name),
                "open": total("linkwatch_active_instances", journey=journey.name),
                "converted": total("linkwatch_journey_converted_total", journey=journey.name),
                "steps": [
                    {
                        "name": step.name,
                        "cause": step.cause.value if step.cause else None,
                        "reached": total(
                            "linkwatch_journey_step_reached_total",
                            journey=journey.name,
                            step=step.name,
                        ),
                        "dropped": total(
                            "linkwatch_journey_dropped_off_total",
                            journey=journey.name,
                            step=step.name,
                        ),
                    }
                    for step in journey.steps
                ],
            }
            for journey in self.journeys().journeys
        ]
        causes = (cause.value for cause in DROPOFF_CAUSES)
        return {
            "generated_at": format_ts(int(time.time() * 1000)),
            "events": total("linkwatch_events_total"),
            "rejected": total("linkwatch_records_rejected_total"),
            "late": total("linkwatch_events_late_total"),
            "duplicate": total("linkwatch_events_duplicate_total"),
            "resolutions": total("linkwatch_resolutions_total"),
            "triggers": by("linkwatch_triggers_total", "type", get_args(TriggerType)),
            "causes": by("linkwatch_journey_dropped_off_total", "cause", causes),
            "journeys": journeys,
            "recent": list(self.recent),
            "links_broken": by("linkwatch_links_broken", "kind", ("link", "campaign")),
            "broken": list(reversed(self.broken.values())),  # newest first
        }


def _values(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    """LinkWatch samples by sample name (`..._total` for counters), as /metrics shows them."""
    values: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in registry.collect():
        if family.name.startswith("linkwatch_"):
            for sample in family.samples:
                values.setdefault(sample.name, []).append((sample.labels, sample.value))
    return values


def _recent_row(out: Trigger | Resolution) -> dict[str, Any]:
    """Only what an operator reads on the page: no session, url or other context."""
    return {
        "type": out.type,
        "journey": out.journey,
        "step": out.missed_step,
        "cause": out.cause.value,
        "user_id": out.user_id,
        "event_time": out.event_time,
    }


def _broken_row(alert: LinkAlert) -> dict[str, Any]:
    return {
        "kind": alert.entity_kind,
        "id": alert.entity_id,
        "since": alert.window_end,
        "reasons": list(alert.reasons),
        "clicks": alert.clicks,
        "dead_ends": alert.dead_ends,
        "dead_end_rate": alert.dead_end_rate,
        "dropoff_rate": alert.dropoff_rate,
    }
