"""Faust's current event, set for a block of code.

A Faust table write goes to the changelog partition (and RocksDB database) of the event being
handled. An agent that takes records in batches holds records of several partitions at once,
so it writes each partition's states in the context of one of that partition's records."""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

# Faust keeps the current event here (read by faust.streams.current_event, which tables use).
from faust.streams import _current_event

from linkwatch.store import BytesTable, end_of_batch_key


@contextmanager
def event_context(event: Any) -> Iterator[None]:
    """Make `event` Faust's current event while the block runs."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def write_partitions(
    unwritten: dict[int, Any], write: Callable[[int], int]
) -> list[tuple[int, Any]]:
    """Write each partition with changes (`unwritten`: partition → one of its records):
    `write(partition)` runs in that record's event context and says how many table writes it
    made. Nothing is waited for: returns (partition, event) for each partition written, what
    `end_batch` then needs, and forgets what was unwritten."""
    written: list[tuple[int, Any]] = []
    for partition, event in unwritten.items():
        with event_context(event):
            if write(partition):
                written.append((partition, event))
    unwritten.clear()
    return written


async def end_batch(
    table: BytesTable,
    written: list[tuple[int, Any]],
    flush: Callable[[], Awaitable[None]] | None,
) -> None:
    """Make a batch's changelog writes recoverable on Tansu (see `store.end_of_batch_key`):
    once they are acknowledged, end each partition written with a marker, in the context of
    one of its records (`written`: partition, event), and wait for the markers too, since
    Faust may commit the batch's offsets as soon as the batch is handled."""
    if not written or flush is None:
        return
    await flush()
    for partition, event in written:
        with event_context(event):
            table[end_of_batch_key(partition)] = b""
    await flush()
