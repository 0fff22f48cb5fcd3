"""Faust's current event, set for a block of code.

A Faust table write goes to the changelog partition (and RocksDB database) of the event being
handled. An agent that takes records in batches holds records of several partitions at once,
so it writes each partition's states in the context of one of that partition's records."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Faust keeps the current event here (read by faust.streams.current_event, which tables use).
from faust.streams import _current_event


@contextmanager
def event_context(event: Any) -> Iterator[None]:
    """Make `event` Faust's current event while the block runs."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
