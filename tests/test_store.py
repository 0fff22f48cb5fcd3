from __future__ import annotations

from linkwatch.store import MAX_VALUE_BYTES, WriteBackStore


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
