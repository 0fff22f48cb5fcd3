"""`CommitTable`: a changelog partition's records are restored only when a progress record
closes them, and an unfinished commit found at the end of recovery is dropped and undone in the
changelog. The table is Faust's own (memory store); the changelog records are fed to it as
Faust's recovery would, and what it writes back is read from Faust's producer buffer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import faust
import orjson
import pytest
from faust.types import TP

from linkwatch.commit_table import CommitTable
from linkwatch.store import end_of_batch_key, progress_key

CLOSING = orjson.dumps({"watermark": 5, "closes_commit": True})
LEGACY = orjson.dumps({"watermark": 5})  # a progress record of a version before


def record(partition: int, offset: int, key: bytes, value: bytes | None) -> Any:
    """A changelog event as Faust's recovery hands it to the table."""
    message = SimpleNamespace(partition=partition, offset=offset, key=key, value=value)
    return SimpleNamespace(key=key, value=value, message=message)


def commit(partition: int, first: int, *writes: tuple[bytes, bytes | None]) -> list[Any]:
    """Records of one whole commit: its writes, then the progress record closing them."""
    records = [record(partition, first + i, k, v) for i, (k, v) in enumerate(writes)]
    return [*records, record(partition, first + len(writes), progress_key(partition), CLOSING)]


@pytest.fixture
def table() -> CommitTable:
    app = faust.App("linkwatch-test-commit-table", store="memory://", broker="kafka://x:1")
    options: dict[str, Any] = {"partitions": 4, "key_type": bytes, "value_type": bytes}
    made = CommitTable(app, name="states", beacon=app.tables.beacon, **options)
    return app.tables.add(made)


def restored(table: CommitTable) -> dict[bytes, bytes]:
    return {k: v for k, v in table.data.items() if not k.startswith(b"\x00")}


def written_back(table: CommitTable) -> list[tuple[bytes, bytes | None, int]]:
    pending = table.app.producer.buffer.pending
    sent = []
    while not pending.empty():
        message = pending.get_nowait().message
        sent.append((message.key, message.value, message.partition))
    return sent


async def finish_recovery(table: CommitTable, *partitions: int) -> None:
    topic = table.changelog_topic.get_topic_name()
    await table.on_recovery_completed({TP(topic, p) for p in partitions}, set())


def test_records_wait_for_the_progress_record_that_closes_them(table: CommitTable) -> None:
    whole = commit(1, 0, (b"u1", b"a"), (b"u2", b"b"))
    table.apply_changelog_batch(whole[:2])  # Faust's recovery buffer may split a commit
    assert restored(table) == {}
    table.apply_changelog_batch(whole[2:])
    assert restored(table) == {b"u1": b"a", b"u2": b"b"}


async def test_an_unfinished_commit_is_dropped_and_undone_in_the_changelog(
    table: CommitTable,
) -> None:
    told: list[tuple[int, int, int]] = []
    table.on_unfinished = lambda *counts: told.append(counts)
    table.apply_changelog_batch(
        [
            *commit(2, 0, (b"u1", b"a"), (b"u2", b"b")),
            record(2, 3, end_of_batch_key(2), b""),
            # A worker killed in the middle of its next commit: no progress record after it.
            record(2, 4, b"u1", b"later"),
            record(2, 5, b"u2", None),
            record(2, 6, b"u3", b"new"),
            record(2, 7, b"u1", b"later still"),
        ]
    )
    await finish_recovery(table, 2)
    assert restored(table) == {b"u1": b"a", b"u2": b"b"}
    # Each key it touched, as restored (u3 had no value: deleted), so that the next progress
    # record cannot close the dropped records into a later recovery.
    assert written_back(table) == [(b"u1", b"a", 2), (b"u2", b"b", 2), (b"u3", None, 2)]
    assert told == [(2, 4, 3)]


async def test_the_undoing_writes_are_closed_with_what_follows_them(table: CommitTable) -> None:
    """The changelog after a restart: the dropped records, the keys written back, and the next
    whole commit. A later recovery restores the keys written back, not the dropped values."""
    table.apply_changelog_batch(
        [
            *commit(0, 0, (b"u1", b"a")),
            record(0, 2, b"u1", b"dropped"),
            record(0, 3, b"u2", b"dropped"),
            record(0, 4, b"u1", b"a"),  # written back
            record(0, 5, b"u2", None),  # written back: deleted
            *commit(0, 6, (b"u3", b"c")),
        ]
    )
    await finish_recovery(table, 0)
    assert restored(table) == {b"u1": b"a", b"u3": b"c"}
    assert written_back(table) == []


async def test_markers_after_a_whole_commit_are_no_unfinished_commit(table: CommitTable) -> None:
    told: list[tuple[int, int, int]] = []
    table.on_unfinished = lambda *counts: told.append(counts)
    table.apply_changelog_batch(
        [*commit(3, 0, (b"u1", b"a")), record(3, 2, end_of_batch_key(3), b"")]
    )
    await finish_recovery(table, 3)
    assert restored(table) == {b"u1": b"a"}
    assert (told, written_back(table)) == ([], [])


async def test_records_after_a_progress_record_of_an_older_version_are_restored(
    table: CommitTable,
) -> None:
    """Before progress records closed every commit, one followed the states only when the
    watermark moved: what came after the last one was a whole commit all the same."""
    table.apply_changelog_batch(
        [
            record(1, 0, b"u1", b"a"),
            record(1, 1, progress_key(1), LEGACY),
            record(1, 2, b"u1", b"b"),
        ]
    )
    await finish_recovery(table, 1)
    assert restored(table) == {b"u1": b"b"}
    assert written_back(table) == []


async def test_partitions_are_closed_and_finished_each_on_its_own(table: CommitTable) -> None:
    table.apply_changelog_batch(
        [
            record(0, 0, b"u0", b"open"),
            *commit(1, 0, (b"u1", b"a")),
            *commit(2, 0, (b"u2", b"b")),
            record(2, 2, b"u2", b"open"),
        ]
    )
    assert restored(table) == {b"u1": b"a", b"u2": b"b"}
    await finish_recovery(table, 1, 2)  # not 0 (a standby's, say: it waits on)
    assert written_back(table) == [(b"u2", b"b", 2)]
    table.apply_changelog_batch([record(0, 1, progress_key(0), CLOSING)])
    assert restored(table) == {b"u0": b"open", b"u1": b"a", b"u2": b"b"}


async def test_a_recovery_that_reads_again_from_an_earlier_offset_closes_only_what_it_closes(
    table: CommitTable,
) -> None:
    table.apply_changelog_batch([*commit(1, 0, (b"u1", b"a")), record(1, 2, b"u1", b"open")])
    # Restarted from offset 1: its progress record closes u1@0 again, not the held u1@2.
    table.apply_changelog_batch(
        [record(1, 1, progress_key(1), CLOSING), record(1, 2, b"u1", b"open")]
    )
    await finish_recovery(table, 1)
    assert restored(table) == {b"u1": b"a"}
    assert written_back(table) == [(b"u1", b"a", 1)]
