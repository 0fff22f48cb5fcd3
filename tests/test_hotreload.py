"""Hot reload in the shell: the file watcher, and the live worker's adapter switching each
partition to the new journeys in that partition's own event context."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from linkwatch.hotreload import JourneysWatcher
from linkwatch.journeys import JourneySet, load_journeys
from linkwatch.metrics import Metrics
from linkwatch.reload import load_shapes, shapes_of
from linkwatch.service import LiveJourneys
from linkwatch.settings import Settings
from linkwatch.state import load_state
from linkwatch.store import progress_key
from tests.builders import raw
from tests.test_reload import BOTH, BROWSE, CHECKOUT, SETTINGS, WITHOUT_BROWSE
from tests.test_service import message as service_message

# -- the watcher -----------------------------------------------------------------------------


class Watched:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "journeys.toml"
        self.path.write_text(SETTINGS + BROWSE + CHECKOUT)
        self.applied: list[JourneySet] = []
        self.registry = CollectorRegistry()
        self.watcher = JourneysWatcher(
            self.path, load_journeys(self.path), self.applied.append, self.registry
        )

    def count(self, outcome: str) -> float | None:
        labels = {"outcome": outcome}
        return self.registry.get_sample_value("linkwatch_journeys_reloads_total", labels)


@pytest.fixture
def watched(tmp_path: Path) -> Watched:
    return Watched(tmp_path)


def reload_logs(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "linkwatch.reload"]


def test_an_unchanged_file_is_left_alone(
    watched: Watched, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert watched.watcher.poll() == "unchanged"
    assert watched.applied == []
    assert reload_logs(caplog) == []
    assert (watched.count("applied"), watched.count("rejected")) == (0, 0)


def test_a_changed_file_is_applied_and_the_change_logged(
    watched: Watched, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    watched.path.write_text(SETTINGS + CHECKOUT)
    assert watched.watcher.poll() == "applied"
    (applied,) = watched.applied
    assert [j.name for j in applied.journeys] == ["buy"]
    assert reload_logs(caplog) == [
        (
            logging.INFO,
            f"journeys reloaded from {watched.path}: 1 journeys "
            "(added [], removed ['browse'], changed [])",
        )
    ]
    assert watched.count("applied") == 1
    # Each version once: the next poll sees nothing new.
    assert watched.watcher.poll() == "unchanged"
    assert len(watched.applied) == 1


def test_the_content_decides_not_the_modification_time(watched: Watched) -> None:
    stat = watched.path.stat()
    changed = SETTINGS + BROWSE.replace('within = "30m"', 'within = "20m"') + CHECKOUT
    watched.path.write_text(changed)
    os.utime(watched.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same mtime
    assert watched.watcher.poll() == "applied"
    os.utime(watched.path)  # touched: a new mtime, the same content
    assert watched.watcher.poll() == "unchanged"
    assert len(watched.applied) == 1


def test_an_invalid_file_is_rejected_once_and_the_old_config_stays(
    watched: Watched, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = watched.watcher.current
    watched.path.write_text(SETTINGS + BROWSE.replace('within = "30m"', 'within = "soon"'))
    assert watched.watcher.poll() == "rejected"
    assert [watched.watcher.poll() for _ in range(3)] == ["unchanged"] * 3  # not retried
    ((level, line),) = reload_logs(caplog)
    assert level == logging.WARNING
    prefix = f"journeys reload rejected: {watched.path}: invalid journeys: "
    assert line.startswith(prefix)
    assert "journey[0] 'browse' → step[1] 'cart' → within" in line
    assert "invalid duration 'soon'" in line
    assert "\n" not in line
    assert line.count(str(watched.path)) == 1
    assert watched.applied == []
    assert watched.watcher.current is before
    assert (watched.count("applied"), watched.count("rejected")) == (0, 1)
    # Fixed: the change is reported against the configuration still in effect.
    caplog.clear()
    watched.path.write_text(SETTINGS + CHECKOUT)
    assert watched.watcher.poll() == "applied"
    assert reload_logs(caplog)[0][1].endswith("(added [], removed ['browse'], changed [])")


def test_every_problem_of_a_rejected_file_is_on_the_one_line(
    watched: Watched, caplog: pytest.LogCaptureFixture
) -> None:
    broken = BROWSE.replace('within = "30m"', 'within = "soon"').replace(
        'cause = "distracted"', 'cause = "bored"'
    )
    watched.path.write_text(SETTINGS + broken)
    assert watched.watcher.poll() == "rejected"
    ((_, line),) = reload_logs(caplog)
    assert "invalid duration 'soon'" in line
    assert "step[2] 'checkout' → cause" in line
    assert "; " in line
    assert "\n" not in line


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda path: path.unlink(), "cannot read journeys file: No such file or directory"),
        (lambda path: path.write_bytes(b"\xff\xfe not text"), "journeys file is not valid UTF-8"),
        (lambda path: path.write_text("[[journey]\n"), "not valid TOML"),
    ],
)
def test_an_unreadable_file_is_rejected(
    watched: Watched, caplog: pytest.LogCaptureFixture, damage: Any, problem: str
) -> None:
    original = watched.path.read_text()
    damage(watched.path)
    assert watched.watcher.poll() == "rejected"
    assert watched.watcher.poll() == "unchanged"
    ((level, line),) = reload_logs(caplog)
    assert level == logging.WARNING
    assert line.startswith(f"journeys reload rejected: {watched.path}: {problem}")
    watched.path.write_text(original)  # back: valid again, applied (nothing changed)
    assert watched.watcher.poll() == "applied"


# -- settings --------------------------------------------------------------------------------


def test_the_reload_interval_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().reload_interval == 5
    monkeypatch.setenv("LINKWATCH_RELOAD_INTERVAL", "0")
    disabled = Settings()
    assert disabled.reload_interval == 0
    assert (
        Settings.model_validate(
            {k.removeprefix("LINKWATCH_").lower(): v for k, v in disabled.to_env().items()}
        )
        == disabled
    )
    assert disabled.namespaced("t1").reload_interval == 0
    monkeypatch.setenv("LINKWATCH_RELOAD_INTERVAL", "-1")
    with pytest.raises(ValidationError):
        Settings()


# -- the live worker's adapter -------------------------------------------------------------


class Topic:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes]] = []

    async def send(self, *, key: bytes | None, value: bytes, **_: Any) -> asyncio.Future[None]:
        self.sent.append((key, value))
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered


def message(topic: str, key: bytes | None, value: bytes, partition: int = 0) -> Any:
    return service_message(topic, 0, key, value, partition)


def tick(partition: int = 0) -> Any:
    return message("linkwatch.ticks", None, b"", partition)


class Worker:
    """A `LiveJourneys` over in-memory tables (kept across a simulated restart)."""

    def __init__(
        self, journeys: JourneySet, tables: tuple[dict[bytes, bytes], dict[bytes, bytes]]
    ) -> None:
        self.registry = CollectorRegistry()
        # A 1 ms idle timeout: one tick later the partition's watermark follows the clock.
        settings = Settings(idle_timeout="1ms", allowed_lateness="2s")
        self.live = LiveJourneys(
            settings, journeys, Metrics(self.registry), *tables, Topic(), Topic()
        )

    def metric(self, name: str, journey: str) -> float | None:
        return self.registry.get_sample_value(name, {"journey": journey})

    async def browse(self, user: str, partition: int) -> None:
        """`user` opens the browse journey: a product click now, applied by a tick (the
        partition's watermark follows the clock)."""
        value = raw(event_id=f"{user}-p", user_id=user, ts=int(time.time() * 1000), page="product")
        await self.live.on_event(message("events.click", user.encode(), value, partition))
        await asyncio.sleep(0.01)
        await self.live.on_event(tick(partition))


def instances(tables: tuple[dict[bytes, bytes], Any], user: str) -> set[str]:
    return set(load_state(tables[0][user.encode()])[1].instances)


async def test_each_partition_retires_at_its_next_record_or_tick() -> None:
    tables: tuple[dict[bytes, bytes], dict[bytes, bytes]] = ({}, {})
    worker = Worker(BOTH, tables)
    await worker.browse("u1", partition=0)
    await worker.browse("u2", partition=1)
    assert worker.metric("linkwatch_journey_started_total", "browse") == 2

    worker.live.reload(WITHOUT_BROWSE)
    # Nothing is written outside a partition's event context (RocksDB requires it).
    assert instances(tables, "u1") == instances(tables, "u2") == {"browse"}
    assert worker.metric("linkwatch_journey_retired_total", "browse") in (None, 0)

    await worker.live.on_event(tick(partition=0))
    assert instances(tables, "u1") == set()
    assert instances(tables, "u2") == {"browse"}
    assert worker.metric("linkwatch_journey_retired_total", "browse") == 1
    progress = orjson.loads(tables[0][progress_key(0)])
    assert load_shapes(progress["journeys"]) == shapes_of(WITHOUT_BROWSE)

    await worker.browse("u3", partition=1)  # a record: partition 1 switches first
    assert instances(tables, "u2") == instances(tables, "u3") == set()
    assert worker.metric("linkwatch_journey_retired_total", "browse") == 2
    assert worker.metric("linkwatch_journey_started_total", "browse") == 2  # u3: not started
    assert worker.metric("linkwatch_active_instances", "browse") == 0


async def test_a_restart_with_other_journeys_retires_what_they_removed() -> None:
    tables: tuple[dict[bytes, bytes], dict[bytes, bytes]] = ({}, {})
    before = Worker(BOTH, tables)
    await before.browse("u1", partition=0)
    restarted = Worker(WITHOUT_BROWSE, tables)
    await restarted.live.on_event(tick(partition=0))
    assert restarted.metric("linkwatch_journey_retired_total", "browse") == 1
    assert instances(tables, "u1") == set()


async def test_a_reload_keeps_the_allowed_lateness_override() -> None:
    worker = Worker(BOTH, ({}, {}))
    worker.live.reload(WITHOUT_BROWSE)
    assert worker.live.journeys.allowed_lateness_ms == 2_000
    await worker.browse("u1", partition=0)
    assert worker.live.processors[0].lateness_ms == 2_000
