"""The live funnel page (/ui) in a real browser: headless Chromium on a live worker shows the
numbers /metrics shows, follows new events, lists the broken link and the recent triggers, and
puts what comes from the stream on the page as text, never as markup."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import orjson
import pytest

from linkwatch.produce import produce
from linkwatch.settings import Settings
from linkwatch.simulate import generate
from linkwatch.suppression import in_holdout
from tests.integration.workers import FAST, START, WorkerProcess, run, sum_metric, wait_for

# Links judged every 5 s over a minute, so real-time dead ends break a link within seconds.
LINKS = ('window = "1h"\nbucket = "5m"', 'window = "1m"\nbucket = "5s"')
BROKEN_LINK = "lk-ui-dead"
XSS = '<img id="xss" src="ui/none" onerror="document.title=1">'  # a user id, as far as we know
USERS = r"ui-(user|live)-"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    reason = "chromium is not installed (Debian package `chromium`; `make tools` installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def dump_dom(browser: str, url: str, profile: Path) -> str:
    """The page's DOM once its script has run for 4 s of virtual time (two polls)."""
    command = [browser, "--headless=new", "--no-sandbox", "--disable-gpu"]  # root: no sandbox
    command += [f"--user-data-dir={profile}", "--virtual-time-budget=4000", "--dump-dom", url]
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


VOID = {"meta", "link", "br", "img", "input", "hr", "wbr", "source", "col", "area", "base"}


class Page(HTMLParser):
    """What the page shows: its numbers (by `data-metric`), the id cells of the broken-links
    and recent-triggers tables, every element id, and the text outside the recent triggers."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.stack: list[dict[str, str]] = []  # attributes of the open elements
        self.numbers: dict[str, int] = {}
        self.cells: dict[str, list[str]] = {"broken": [], "recent": []}
        self.ids: set[str] = set()
        self.outside_recent: list[str] = []
        self.status = ""
        self.feed(dom)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag not in VOID:
            self.stack.append(attributes)

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        here = self.stack[-1] if self.stack else {}
        inside = {attributes.get("id") for attributes in self.stack}
        if "data-metric" in here:
            self.numbers[here["data-metric"]] = int(data.replace(",", ""))
        if here.get("class") == "id":
            for table, cells in self.cells.items():
                if table in inside:
                    cells.append(data)
        if "recent" not in inside:
            self.outside_recent.append(data)
        if here.get("id") == "status":
            self.status += data


def series(key: str) -> tuple[str, dict[str, str]]:
    """The /metrics series behind a number of the page (`data-metric` in app.js). A number
    the page shows without a series here fails the test."""
    head, _, rest = key.partition(".")
    totals = {
        "events": "linkwatch_events_total",
        "rejected": "linkwatch_records_rejected_total",
        "late": "linkwatch_events_late_total",
        "duplicate": "linkwatch_events_duplicate_total",
        "resolutions": "linkwatch_resolutions_total",
    }
    by_label = {
        "triggers": ("linkwatch_triggers_total", "type"),
        "causes": ("linkwatch_journey_dropped_off_total", "cause"),
        "links_broken": ("linkwatch_links_broken", "kind"),
        "started": ("linkwatch_journey_started_total", "journey"),
        "open": ("linkwatch_active_instances", "journey"),
        "converted": ("linkwatch_journey_converted_total", "journey"),
    }
    per_step = {
        "reached": "linkwatch_journey_step_reached_total",
        "dropped": "linkwatch_journey_dropped_off_total",
    }
    if head in totals:
        return totals[head], {}
    if head in by_label:
        name, label = by_label[head]
        return name, {label: rest}
    journey, _, step = rest.partition(".")
    return per_step[head], {"journey": journey, "step": step}


def look(worker: WorkerProcess, browser: str, profile: Path) -> tuple[Page, Samples]:
    """Load the page between two scrapes of /metrics: every number it shows must lie between
    the two (counters only grow; a gauge may move either way)."""
    before = worker.metrics()
    page = Page(dump_dom(browser, worker.url + "/ui", profile))
    after = worker.metrics()
    assert page.status.startswith("live"), page.status
    for key, shown in page.numbers.items():
        name, labels = series(key)
        low, high = sorted((sum_metric(before, name, **labels), sum_metric(after, name, **labels)))
        assert low <= shown <= high, f"{key}: the page shows {shown}, /metrics {low}..{high}"
    assert not any(map(names_a_user, page.outside_recent)), "a user id outside the recent list"
    return page, after


def names_a_user(text: str) -> bool:
    return bool(re.search(USERS, text)) or "xss" in text


def live_clicks(now_ms: int) -> list[bytes]:
    """Real-time clicks on one link, by 24 users none of whom is in the holdout (so each dead
    end is published): 8 land on a failure (a dead-end rate of 1/3 breaks the link), 16 on the
    cart (each starts cart_to_purchase). Dated 5 s ahead, so that a slow consumer does not see
    them behind the watermark (the clock minus the idle timeout) and count them late."""
    users = [f"ui-live-{n:02d}" for n in range(40) if not in_holdout(f"ui-live-{n:02d}", 5)]
    assert not in_holdout(XSS, 5)
    users = [XSS, *users[:23]]
    clicks = []
    for n, user in enumerate(users):
        dead = n < 8
        click = {
            "kind": "click",
            "event_id": f"ui-live-{n}",
            "user_id": user,
            "ts": now_ms + 5_000,
            "channel": "web",
            "link_id": BROKEN_LINK,
            "url": "https://shop.example/landing",
            "page": "landing" if dead else "cart",
        }
        if dead:
            click["landing_status"] = 502
        clicks.append(orjson.dumps(click))
    return clicks


@pytest.mark.timeout(240)
def test_the_live_page_shows_the_metrics_and_follows_new_events(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    browser = chromium()
    journeys = resources.files("linkwatch").joinpath("journeys.toml").read_text()
    assert LINKS[0] in journeys
    journeys_file = tmp_path / "journeys.toml"
    journeys_file.write_text(journeys.replace(*LINKS))
    settings = kafka_settings.model_copy(update=FAST | {"journeys_file": journeys_file})
    lines = list(generate(users=150, seed=5, start_ms=START, user_prefix="ui-user-"))
    profile = tmp_path / "chromium"

    with WorkerProcess(settings, tmp_path) as worker:
        assert run(produce(settings, lines)) == len(lines)

        def settled() -> bool:
            m = worker.metrics()
            seen = sum_metric(m, "linkwatch_events_total")
            seen += sum_metric(m, "linkwatch_records_rejected_total")
            open_ = sum_metric(m, "linkwatch_active_instances")
            return seen == len(lines) and open_ == 0

        # Every journey of the historic traffic closed: the funnels have drop-offs to show.
        assert wait_for(settled, timeout=60, interval=0.5), worker.tail_log()
        first, metrics = look(worker, browser, profile)
        for step in ("cart", "checkout", "purchase"):  # every step of a journey is there
            assert f"reached.cart_to_purchase.{step}" in first.numbers
        assert first.numbers["events"] > 0
        assert first.numbers["triggers.dropoff"] > 0
        assert first.numbers["started.content_to_purchase"] > 0
        assert sum(v for k, v in first.numbers.items() if k.startswith("causes.")) > 0
        assert first.cells["recent"], "the recent triggers"

        clicks = live_clicks(int(time.time() * 1000))
        assert run(produce(settings, clicks)) == len(clicks)
        started = sum_metric(metrics, "linkwatch_journey_started_total")
        dead_ends = sum_metric(metrics, "linkwatch_triggers_total", type="dead_end")

        def moved() -> bool:
            m = worker.metrics()
            return (
                sum_metric(m, "linkwatch_journey_started_total") >= started + 16
                and sum_metric(m, "linkwatch_triggers_total", type="dead_end") >= dead_ends + 8
                and sum_metric(m, "linkwatch_links_broken", kind="link") >= 1
            )

        assert wait_for(moved, timeout=60, interval=0.5), worker.tail_log()
        second, _ = look(worker, browser, profile)

    assert second.numbers["events"] >= first.numbers["events"] + len(clicks)
    cart = "started.cart_to_purchase"
    assert second.numbers[cart] >= first.numbers[cart] + 16
    assert second.numbers["triggers.dead_end"] >= first.numbers["triggers.dead_end"] + 8
    assert second.numbers["links_broken.link"] >= 1
    assert BROKEN_LINK in second.cells["broken"]
    # A user id that looks like markup is shown as it is, and is not markup.
    assert XSS in second.cells["recent"]
    assert "xss" not in second.ids
