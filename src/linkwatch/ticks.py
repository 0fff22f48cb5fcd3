"""Pacing the worker's ticks: one in flight per partition.

A tick is a record the worker sends itself, to each partition it owns, every tick interval;
reading it back moves that partition's watermark with the clock (see `partition`). Sent
blindly, ticks pile up on a broker slower to serve them than the timer is to send them: the
fault suite's broker outage, on Tansu with its S3 storage, ended with ~3,000 unread ticks per
partition after ten minutes, each fetch slower for every batch stored, and the last drop-offs,
which only ticks could fire, never came. So a partition gets its next tick only once the
previous one has been read, has failed to send, or has gone unread for `resend_after_ms`
(lost, or the broker is that slow): the ticks go at the pace the broker returns them.

Pure: the caller passes the wall clock in.
"""

from __future__ import annotations

from collections.abc import Iterable


class TickPacer:
    def __init__(self, resend_after_ms: int) -> None:
        self.resend_after_ms = resend_after_ms
        self._in_flight: dict[int, int] = {}  # partition → wall-clock ms its tick was sent

    def due(self, partitions: Iterable[int], now_ms: int) -> list[int]:
        """The partitions to send a tick to now (in order), marked as sent at `now_ms`."""
        due = []
        for partition in sorted(partitions):
            sent = self._in_flight.get(partition)
            if sent is None or now_ms - sent >= self.resend_after_ms:
                self._in_flight[partition] = now_ms
                due.append(partition)
        return due

    def read(self, partition: int) -> None:
        """A tick of `partition` was read (ours or, after a restart, an earlier one's)."""
        self._in_flight.pop(partition, None)

    def failed(self, partition: int) -> None:
        """The tick sent to `partition` was not delivered: the next timer sends another."""
        self._in_flight.pop(partition, None)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: their ticks are another worker's business now."""
        for partition in partitions:
            self._in_flight.pop(partition, None)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)
