"""A Faust table whose changelog recovery restores whole commits, never part of one.

An offset commit writes each partition's changed states, then the partition's progress record
(`store.progress_key`: the watermark they were decided under), then, once the broker has both,
the offsets. A worker killed in the middle leaves part of a commit in the changelog, with no
progress record after it, and those offsets uncommitted. Faust's recovery applies whatever it
reads, so the next worker started from states of a later moment than the progress restored
with them: the records replayed from the committed offsets met states that had already moved
past them, some of which had forgotten them (a user trimmed or deleted once the watermark
passed), and were applied a second time. The kill -9 test saw it in CI on 2026-11-24: a
watermark jump (a topic read to its end) rewrote hundreds of users, the worker was killed
before that commit's progress record, and its successor invented drop-offs and dormancy
triggers for users whose replayed clicks found their state already trimmed.

Here each changelog partition's records wait until a progress record closes them, and are
applied with it. When recovery ends, what still waits is an unfinished commit: it is dropped,
and every key it touched is written again with its restored value (or deleted), so that no
later progress record can close it into a later recovery (it closes everything before it).

Progress records written before this existed did not close every commit (one was written only
when the watermark moved): records after the last of those are applied, as Faust would. The
new ones say so (`CLOSES_COMMIT`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from faust import Table
from faust.types import TP, EventT

from linkwatch.store import CLOSES_COMMIT, PROGRESS_PREFIX, end_of_batch_key

log = logging.getLogger(__name__)


class CommitTable(Table[bytes, bytes]):
    """A Faust table of bytes whose recovery applies a changelog partition's records only
    when a progress record closes them (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per changelog partition: records read since its last progress record, in order.
        self._open: dict[int, list[EventT[Any]]] = {}
        # Per changelog partition: whether its last progress record closes every commit.
        self._closing: dict[int, bool] = {}
        # Told (partition, records dropped, keys written again) for each unfinished commit.
        self.on_unfinished: Callable[[int, int, int], None] = lambda *_: None

    def apply_changelog_batch(self, batch: Iterable[EventT[Any]]) -> None:
        closed: list[EventT[Any]] = []
        for event in batch:
            message = event.message
            held = self._open.setdefault(message.partition, [])
            if held and message.offset <= held[-1].message.offset:
                # Read again from an earlier offset (a recovery restarted): so will the rest.
                held[:] = [e for e in held if e.message.offset < message.offset]
            key = message.key
            if not held and key == end_of_batch_key(message.partition):
                closed.append(event)  # ends the commit just closed: nothing to wait for
                continue
            held.append(event)
            if isinstance(key, bytes) and key.startswith(PROGRESS_PREFIX):
                self._closing[message.partition] = _closes_commit(message.value)
                closed.extend(held)
                held.clear()
        if closed:
            super().apply_changelog_batch(closed)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        for partition in sorted({tp.partition for tp in active_tps}):
            self._finish(partition)
        await super().on_recovery_completed(active_tps, standby_tps)

    def _finish(self, partition: int) -> None:
        """Recovery of `partition` is done: what waits is an unfinished commit."""
        held = self._open.pop(partition, [])
        marker = end_of_batch_key(partition)
        keys = list(dict.fromkeys(e.message.key for e in held if e.message.key != marker))
        if not keys or not self._closing.get(partition, False):
            # Markers only, or written before progress records closed every commit.
            if held:
                super().apply_changelog_batch(held)
            return
        for key in keys:
            # The restored value, or a deletion, after the records dropped.
            self.send_changelog(partition, key, self.data.get(key), value_serializer="raw")
        log.warning(
            "changelog %s partition %d: %d records of an unfinished commit dropped "
            "(a worker stopped mid-commit), %d keys written again as restored",
            self.name,
            partition,
            len(held),
            len(keys),
        )
        self.on_unfinished(partition, len(held), len(keys))


def _closes_commit(value: bytes | None) -> bool:
    try:
        progress = orjson.loads(value or b"null")
    except orjson.JSONDecodeError:
        return False
    return isinstance(progress, dict) and progress.get(CLOSES_COMMIT) is True
