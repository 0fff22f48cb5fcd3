from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from linkwatch.service import create_app
from linkwatch.settings import Settings
from linkwatch.stream_resume import InOrderRecovery, skipped_offsets


def test_offsets_skipped_after_the_last_one_handled() -> None:
    assert skipped_offsets(685, 684, None) == 0
    assert skipped_offsets(689, 684, 658) == 4  # the committed offset no longer matters
    assert skipped_offsets(660, 684, 658) == 0  # re-read after a seek back: not a gap


def test_the_first_record_since_assignment_is_checked_against_the_committed_offset() -> None:
    assert skipped_offsets(658, None, 658) == 0
    assert skipped_offsets(689, None, 658) == 31
    assert skipped_offsets(12, None, None) == 0  # never committed: nothing to compare with
    assert skipped_offsets(12, None, -1) == 0


@dataclass
class TP:
    topic: str
    partition: int

    def __hash__(self) -> int:
        return hash((self.topic, self.partition))


STREAM, CHANGELOG = TP("events.click", 0), TP("app-states-changelog", 0)


@dataclass
class Steps:
    """What Faust's consumer, flow control and fetcher were asked to do, in order."""

    done: list[str] = field(default_factory=list)


class FakeConsumer:
    def __init__(self, steps: Steps, committed: dict[TP, int | None]) -> None:
        self.steps = steps
        self.committed = committed
        self._committed_offset: dict[TP, int | None] = {}

    def assignment(self) -> set[TP]:
        return {STREAM, CHANGELOG}

    async def perform_seek(self) -> None:
        await asyncio.sleep(0)  # a real seek waits for the broker
        self.steps.done.append("seek")
        # Faust keeps the committed offsets it found, 0 and "none" both as None.
        self._committed_offset.update({tp: o or None for tp, o in self.committed.items()})

    async def seek(self, tp: TP, offset: int) -> None:
        self.steps.done.append(f"seek {tp.topic} to {offset}")

    def resume_flow(self) -> None:
        self.steps.done.append("resume flow")

    def resume_partitions(self, tps: set[TP]) -> None:
        self.steps.done.append(f"fetch {sorted(tp.topic for tp in tps)}")


class FakeApp:
    def __init__(self, steps: Steps, committed: dict[TP, int | None]) -> None:
        self.consumer = FakeConsumer(steps, committed)
        self.conf = type("Conf", (), {"broker_request_timeout": 5.0})()
        self.flow_control = type("Flow", (), {"resume": lambda _: steps.done.append("clear")})()
        self._fetcher = type("Fetcher", (), {"maybe_start": self._start_fetcher})()
        self.steps = steps

    async def _start_fetcher(self) -> None:
        self.steps.done.append("fetcher")


class RecoveryShell:
    """The attributes of Faust's Recovery that `_seek_then_resume` uses."""

    def __init__(self, steps: Steps, committed: dict[TP, int | None]) -> None:
        self.app = FakeApp(steps, committed)
        self.log = logging.getLogger("test")
        self.completed = asyncio.Event()

    async def _wait(self, coro: Awaitable[Any], timeout: float | None = None) -> None:
        await coro

    def _is_changelog_tp(self, tp: TP) -> bool:
        return tp.topic.endswith("-changelog")


async def test_streams_are_fetched_only_after_the_seek_and_the_clearing_of_queues() -> None:
    steps = Steps()
    shell = RecoveryShell(steps, {STREAM: 658, CHANGELOG: 12})
    await InOrderRecovery._seek_then_resume(shell)  # type: ignore[arg-type]
    # Fetched before the seek, records would be handled or cleared and then not re-read.
    assert steps.done == [
        "seek",
        "clear",
        "resume flow",
        "fetch ['events.click']",
        "fetcher",
    ]
    assert shell.completed.is_set()


async def test_stream_partitions_never_committed_are_read_from_the_beginning() -> None:
    """aiokafka seeks only to committed offsets > 0; a partition without one would go on from
    wherever fetches made while it was paused left it, past records Faust dropped."""
    for committed in (None, 0):
        steps = Steps()
        await InOrderRecovery._seek_then_resume(  # type: ignore[arg-type]
            RecoveryShell(steps, {STREAM: committed, CHANGELOG: None})
        )
        assert steps.done[:3] == ["seek", "seek events.click to 0", "clear"]  # changelogs: no


def test_the_worker_app_recovers_tables_with_the_in_order_recovery() -> None:
    app = create_app(Settings()).app
    assert isinstance(app.tables.recovery, InOrderRecovery)
