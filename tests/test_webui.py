"""The live funnel page (/ui) without a broker: the JSON it polls says what /metrics says and
what the worker published, the page's files are served from the package with no remote
resource, and user ids stay in the recent-triggers list. The browser side is tested in
tests/integration/test_ui.py."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import tomllib
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from linkwatch.communities import CommunityAlert
from linkwatch.journeys import load_journeys
from linkwatch.links import LinkAlert
from linkwatch.live_entities import LiveEntities
from linkwatch.metrics import Metrics
from linkwatch.service import LiveJourneys, create_app
from linkwatch.settings import Settings
from linkwatch.signals import Published
from linkwatch.simulate import generate
from linkwatch.triggers import Trigger
from linkwatch.webui import ASSETS, MAX_BROKEN, RECENT, WebUI
from tests.builders import T0
from tests.test_service import RecordingTable, RecordingTopic, message

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "schemas" / "examples" / "outputs"
UI = resources.files("linkwatch") / "ui"


def metric(registry: CollectorRegistry, name: str, **labels: str) -> int:
    """A sum over /metrics as a scraper reads it (the text, not the registry's objects)."""
    wanted = set(labels.items())
    text = generate_latest(registry).decode()
    return round(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and wanted <= set(sample.labels.items())
        )
    )


@pytest.fixture
async def worked() -> tuple[WebUI, LiveJourneys]:
    """A LiveJourneys wired to a WebUI as create_app does, after simulated traffic and a tick
    that closes every journey (the partition falls silent, its watermark follows the clock)."""
    log: list[tuple[str, Any]] = []
    registry = CollectorRegistry()
    live = LiveJourneys(
        Settings(idle_timeout="1s"),
        load_journeys(),
        Metrics(registry),
        RecordingTable(log, "state"),
        RecordingTable(log, "watermark"),
        RecordingTopic(log, "trigger"),
        RecordingTopic(log, "dead letter"),
    )
    ui = WebUI(registry, lambda: live.journeys)
    live.on_published = ui.on_outputs
    lines = generate(users=40, seed=3, start_ms=T0, bad_ratio=0, user_prefix="ui-user-")
    for offset, line in enumerate(lines):
        record = orjson.loads(line)
        topic = f"events.{record['kind']}"
        await live.on_event(message(topic, offset, record["user_id"].encode(), line))
    await asyncio.sleep(1.1)  # idle_timeout
    await live.on_event(message("linkwatch.ticks", 0, None, b""))
    return ui, live


async def test_the_page_data_is_what_metrics_says(worked: tuple[WebUI, LiveJourneys]) -> None:
    ui, live = worked
    data = orjson.loads(ui.data())
    registry = ui.registry
    assert data["events"] == metric(registry, "linkwatch_events_total") > 0
    for kind, count in data["triggers"].items():
        assert count == metric(registry, "linkwatch_triggers_total", type=kind)
    assert data["triggers"]["dropoff"] > 0
    assert set(data["triggers"]) >= {"dropoff", "dead_end", "not_retained", "dormant"}
    assert data["resolutions"] == metric(registry, "linkwatch_resolutions_total")
    assert [j["name"] for j in data["journeys"]] == [j.name for j in live.journeys.journeys]
    for journey in data["journeys"]:
        name = journey["name"]
        assert journey["started"] == metric(
            registry, "linkwatch_journey_started_total", journey=name
        )
        assert journey["open"] == metric(registry, "linkwatch_active_instances", journey=name)
        assert journey["converted"] == metric(
            registry, "linkwatch_journey_converted_total", journey=name
        )
        for step in journey["steps"]:
            labels = {"journey": name, "step": step["name"]}
            assert step["reached"] == metric(
                registry, "linkwatch_journey_step_reached_total", **labels
            )
            assert step["dropped"] == metric(
                registry, "linkwatch_journey_dropped_off_total", **labels
            )
    assert sum(step["dropped"] for j in data["journeys"] for step in j["steps"]) > 0
    # Drop-offs by cause, in the order a buyer meets the causes, zero included.
    assert list(data["causes"]) == [
        "unfamiliar",
        "not_understood",
        "indifferent",
        "distrust",
        "distracted",
    ]
    for cause, count in data["causes"].items():
        assert count == metric(registry, "linkwatch_journey_dropped_off_total", cause=cause)


async def test_recent_triggers_are_the_last_published_newest_first(
    worked: tuple[WebUI, LiveJourneys],
) -> None:
    ui, live = worked
    published = [orjson.loads(value) for _, value in live.triggers_topic.sent]
    assert len(published) > RECENT  # so the bound is exercised
    expected = [(p["type"], p["user_id"], p["event_time"]) for p in reversed(published)]
    rows = orjson.loads(ui.data())["recent"]
    assert [(r["type"], r["user_id"], r["event_time"]) for r in rows] == expected[:RECENT]


async def test_user_ids_appear_only_in_the_recent_triggers(
    worked: tuple[WebUI, LiveJourneys],
) -> None:
    ui, _ = worked
    data = orjson.loads(ui.data())
    assert any(row["user_id"].startswith("ui-user-") for row in data["recent"])
    data.pop("recent")
    assert "ui-user-" not in json.dumps(data)
    # And a recent row carries no context: no session, url, link or started_by event.
    ui.recent.clear()
    await worked[1].on_event(
        message(
            "events.click",
            10_000,
            b"ui-user-x",
            orjson.dumps(
                {
                    "kind": "click",
                    "event_id": "x1",
                    "user_id": "ui-user-x",
                    "ts": T0,
                    "channel": "web",
                    "session_id": "secret-session",
                    "link_id": "l1",
                    "url": "https://shop.example/x",
                    "page": "landing",
                    "landing_status": 500,
                }
            ),
        )
    )
    (row,) = ui.recent
    assert set(row) == {"type", "journey", "step", "cause", "user_id", "event_time"}
    assert row["type"] == "dead_end"


def link_alert(entity_id: str, status: str = "broken", kind: str = "link") -> Published:
    example = json.loads((EXAMPLES / "link_alert-broken.json").read_text())
    alert = LinkAlert.model_validate(
        example | {"entity_id": entity_id, "status": status, "entity_kind": kind}
    )
    return Published("health", f"{kind}:{entity_id}", alert)


def community_alert() -> Published:
    example = json.loads((EXAMPLES / "community_alert-silent.json").read_text())
    return Published("health", "group:g", CommunityAlert.model_validate(example))


def test_broken_links_follow_link_alerts() -> None:
    ui = WebUI(CollectorRegistry(), load_journeys)
    ui.on_entity_outputs(
        [link_alert("lk-a"), link_alert("c-1", kind="campaign"), community_alert()]
    )
    ui.on_entity_outputs([link_alert("lk-b")])
    broken = orjson.loads(ui.data())["broken"]
    assert [(b["kind"], b["id"]) for b in broken] == [
        ("link", "lk-b"),
        ("campaign", "c-1"),
        ("link", "lk-a"),
    ]
    assert broken[0]["reasons"] == ["dead_end_rate"]
    assert broken[0]["dead_end_rate"] == 0.2613
    ui.on_entity_outputs([link_alert("lk-a", "recovered"), link_alert("lk-b", "recovered")])
    assert [b["id"] for b in orjson.loads(ui.data())["broken"]] == ["c-1"]
    # A link and a campaign with the same id are different entities.
    ui.on_entity_outputs([link_alert("c-1", "recovered")])
    assert [b["kind"] for b in orjson.loads(ui.data())["broken"]] == ["campaign"]


def test_broken_links_and_recent_triggers_are_bounded() -> None:
    ui = WebUI(CollectorRegistry(), load_journeys)
    ui.on_entity_outputs([link_alert(f"lk-{n}") for n in range(MAX_BROKEN + 5)])
    ids = [b["id"] for b in orjson.loads(ui.data())["broken"]]
    assert len(ids) == MAX_BROKEN
    assert ids[0] == f"lk-{MAX_BROKEN + 4}"
    assert ids[-1] == "lk-5"  # the oldest gave way
    assert ui.recent.maxlen == RECENT


async def test_the_entity_stage_tells_the_page_once_alerts_are_delivered() -> None:
    delivered: list[str] = []
    ui = WebUI(CollectorRegistry(), load_journeys)

    async def send(*, key: bytes, value: bytes, force: bool, **_: Any) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def deliver() -> None:
            delivered.append("alert")
            done.set_result(None)

        asyncio.get_running_loop().call_later(0.01, deliver)
        return done

    def on_published(outputs: list[Any]) -> None:
        delivered.append("page")
        ui.on_entity_outputs(outputs)

    entities = LiveEntities(
        new_stage=lambda store: pytest.fail("not used"),
        partitions=1,
        records={},
        progress={},
        send_signal=send,
        send_health=send,
        send_profile=send,
        on_measures=lambda measures: None,
        partition_of=lambda entity: 0,
        on_published=on_published,
    )
    await entities._deliver([link_alert("lk-a")])
    assert delivered == ["alert", "page"]
    assert [b["id"] for b in orjson.loads(ui.data())["broken"]] == ["lk-a"]


async def test_the_worker_serves_the_page_from_the_package() -> None:
    app = create_app(Settings())
    # What the worker publishes reaches the page (create_app wires both stages to it).
    app.live.triggers_topic = RecordingTopic([], "trigger")
    trigger = json.loads((EXAMPLES / "trigger-dropoff.json").read_text())
    await app.live._publish([Trigger.model_validate(trigger)], 0)
    assert app.entities is not None
    app.entities.send_health = RecordingTopic([], "health").send
    await app.entities._deliver([link_alert("lk-a")])
    async with TestClient(TestServer(app.app.web.web_app)) as client:
        for name, content_type in ASSETS.items():
            path = "/ui" if name == "index.html" else f"/ui/{name}"
            response = await client.get(path)
            assert response.status == 200
            assert response.headers["Content-Type"] == content_type
            assert await response.read() == UI.joinpath(name).read_bytes()
            assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
        response = await client.get("/ui/data.json")
        assert response.headers["Cache-Control"] == "no-store"
        data = await response.json()
        assert data["events"] == 0
        assert [row["user_id"] for row in data["recent"]] == [trigger["user_id"]]
        assert [row["id"] for row in data["broken"]] == ["lk-a"]
        assert [j["name"] for j in data["journeys"]][:2] == [
            "content_to_purchase",
            "cart_to_purchase",
        ]


class References(HTMLParser):
    """Every src/href of a page, and every element id."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href"} and value is not None:
                self.urls.append(value)
            if name == "id" and value is not None:
                self.ids.add(value)


def test_the_page_loads_nothing_from_elsewhere() -> None:
    page = References()
    page.feed(UI.joinpath("index.html").read_text())
    assert sorted(page.urls) == ["ui/app.js", "ui/style.css"]  # relative: proxies may prefix
    for name in ASSETS:
        text = UI.joinpath(name).read_text()
        assert "://" not in text, f"{name} names a remote resource"
        assert not re.search(r"""url\(|@import|["']//""", text), f"{name} loads something"
    script = UI.joinpath("app.js").read_text()
    # Values from the stream (link ids, user ids) go in as text, never as markup or code.
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", script)
    assert re.findall(r'fetch\("([^"]+)"', script) == ["ui/data.json"]
    # Every element the script looks up is on the page.
    assert set(re.findall(r'getElementById\("([^"]+)"\)', script)) <= page.ids


def test_every_file_of_the_page_ships_in_the_wheel() -> None:
    """What setuptools puts in the wheel is decided by pyproject's package-data globs."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["linkwatch"]
    files = sorted(path.name for path in (ROOT / "src" / "linkwatch" / "ui").iterdir())
    files = [name for name in files if name != "__pycache__"]
    assert files == sorted(ASSETS)
    for name in files:
        assert any(fnmatch.fnmatch(f"ui/{name}", pattern) for pattern in globs), name
