from __future__ import annotations

from linkwatch.engine import new_state
from linkwatch.state import dump_state
from linkwatch.store import (
    MAX_VALUE_BYTES,
    WriteBackStore,
    end_of_batch_key,
    load_partitions,
    progress_key,
)


def encode(key: str, value: str, partition: int) -> bytes:
    return value.encode()


def test_a_value_too_big_for_the_changelog_is_kept_in_memory_and_reported() -> None:
    table: dict[bytes, bytes] = {}
    store: WriteBackStore[str] = WriteBackStore(table, 0, {}, encode)
    reported: list[tuple[str, int]] = []
    store.on_oversized = lambda kind, size: reported.append((kind, size))
    store.kind_of = lambda key: key.partition(":")[0]
    store["group:big"] = "x" * (MAX_VALUE_BYTES + 1)
    store["group:small"] = "y"
    assert store.flush() == 1  # keys written
    assert table == {b"group:small": b"y"}  # the big one is not written, the rest is
    assert store["group:big"] == "x" * (MAX_VALUE_BYTES + 1)  # still in memory
    assert reported == [("group", MAX_VALUE_BYTES + 1)]
    store["group:big"] = "small again"
    store.flush()
    assert table[b"group:big"] == b"small again"


def test_user_ids_are_reported_only_as_users() -> None:
    store: WriteBackStore[str] = WriteBackStore({}, 0, {}, encode)
    reported: list[str] = []
    store.on_oversized = lambda kind, size: reported.append(kind)
    store["group|link:someone"] = "x" * (MAX_VALUE_BYTES + 1)
    store.flush()
    assert reported == ["user"]


def test_progress_and_markers_share_the_table_but_are_not_states() -> None:
    table = {
        b"u1": dump_state(new_state(), 0),
        progress_key(0): b'{"watermark": 5}',
        end_of_batch_key(0): b"",
        b"u2": dump_state(new_state(), 1),
    }
    loaded = load_partitions(table, {0, 1})
    assert {p: set(states) for p, states in loaded.items()} == {0: {"u1"}, 1: {"u2"}}
