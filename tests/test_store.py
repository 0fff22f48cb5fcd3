from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from linkwatch.engine import new_state
from linkwatch.state import dump_state
from linkwatch.store import (
    MAX_VALUE_BYTES,
    CachedStore,
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


# -- CachedStore: a bounded cache over the table ----------------------------------------------


def cached(table: Any, capacity: int) -> CachedStore[str]:
    def scan() -> Iterable[tuple[bytes, bytes]]:
        return list(table.items())

    return CachedStore(
        table,
        0,
        encode=encode,
        decode=bytes.decode,
        read=table.get,
        scan=scan,
        capacity=capacity,
        size=sum(1 for key, value in table.items() if value and not key.startswith(b"\x00")),
    )


KEYS = st.sampled_from(["a", "b", "c", "d", "e", "f"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.text("xyz", min_size=1, max_size=3)),
        st.tuples(st.just("del"), KEYS, st.just("")),
        st.tuples(st.just("get"), KEYS, st.just("")),
        st.tuples(st.just("flush"), st.just(""), st.just("")),
        st.tuples(st.just("take"), st.just(""), st.just("")),
        st.tuples(st.just("write"), st.just(""), st.just("")),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    ops=OPS,
    capacity=st.integers(0, 3),
    stored=st.dictionaries(KEYS, st.text("pq", min_size=1, max_size=2)),
)
def test_a_cached_store_behaves_as_the_mapping_it_stands_for(
    ops: list[tuple[str, str, str]], capacity: int, stored: dict[str, str]
) -> None:
    """Whatever the capacity, reads give what was last written, and each flush leaves the
    table holding exactly the mapping; at most `capacity` unchanged values stay decoded.
    Changes taken (`take`) and written later, in order (`write`), while keys change meanwhile,
    leave the table holding the mapping as it was at each take."""
    table = {key.encode(): value.encode() for key, value in stored.items()}
    table[progress_key(0)] = b"{}"  # not a value: never seen through the store
    model = dict(stored)
    store = cached(table, capacity)
    taken: list[tuple[Any, dict[str, str]]] = []  # (changes, the mapping at the take)

    def in_table() -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in table.items() if k[:1] != b"\x00"}

    def write_oldest() -> None:
        changes, then = taken.pop(0)
        store.write(changes)
        assert in_table() == then

    for op, key, value in ops:
        if op == "set":
            store[key] = value
            model[key] = value
        elif op == "del":
            if key in model:
                del store[key]
                del model[key]
            else:
                with pytest.raises(KeyError):
                    del store[key]
        elif op == "get":
            assert store.get(key) == model.get(key)
            assert (key in store) == (key in model)
        elif op == "take":
            taken.append((store.take(), dict(model)))
        elif op == "write":
            if taken:
                write_oldest()
        else:
            while taken:  # (the worker writes a take only after the ones before it)
                write_oldest()
            store.flush()
            assert in_table() == model
            assert store.cached <= capacity
            assert store.dirty == 0
        assert len(store) == len(model)
        assert dict(store.items()) == model
    assert sorted(store) == sorted(model)


def test_an_older_take_written_late_leaves_the_newer_value() -> None:
    """A key taken, changed and taken again before the first take is written: reads give the
    newest value while both are written, and after; the table ends with it."""
    table: dict[bytes, bytes] = {}
    store = cached(table, capacity=0)
    store["k"] = "v1"
    first = store.take()
    store["k"] = "v2"
    second = store.take()
    store.write(first)
    assert (table[b"k"], store["k"], dict(store.items())) == (b"v1", "v2", {"k": "v2"})
    store.write(second)
    assert (table[b"k"], store["k"], store.dirty) == (b"v2", "v2", 0)


def test_a_cached_store_reads_back_what_it_evicted_from_rocksdb(tmp_path: Path) -> None:
    """On a real RocksDB database (rocksdict, as Faust's rocksdb:// store): values beyond the
    capacity are evicted once written, and read back when asked for."""
    db = Rdict(str(tmp_path / "states"), options=Options(raw_mode=True))
    try:
        store = cached(db, capacity=2)
        for n in range(10):
            store[f"user-{n}"] = f"state-{n}"
        assert store.cached == 10  # unwritten changes are never evicted
        assert store.flush() == 10
        assert store.cached == 2
        before = store.reads
        assert [store[f"user-{n}"] for n in range(8)] == [f"state-{n}" for n in range(8)]
        assert store.reads - before == 8  # the evicted ones came back from the database
        assert store["user-7"] == "state-7"
        assert store.reads - before == 8  # and the latest are held again
        assert store.cached == 2
        del store["user-3"]
        store.flush()
        assert db.get(b"user-3") is None
        assert "user-3" not in store
        assert len(store) == 9
    finally:
        db.close()


def test_a_value_too_big_for_the_changelog_stays_in_a_cached_store() -> None:
    table: dict[bytes, bytes] = {}
    store = cached(table, capacity=0)
    reported: list[int] = []
    store.on_oversized = lambda kind, size: reported.append(size)
    store["big"] = "x" * (MAX_VALUE_BYTES + 1)
    store.flush()
    assert table == {}
    assert reported == [MAX_VALUE_BYTES + 1]
    assert store["big"] == "x" * (MAX_VALUE_BYTES + 1)  # not evicted: only memory has it
    assert dict(store.items()) == {"big": "x" * (MAX_VALUE_BYTES + 1)}
    assert len(store) == 1
