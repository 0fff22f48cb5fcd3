"""Resume the stream partitions after table recovery without skipping records.

Faust (faust-streaming 0.15.3) ends a recovery by resuming fetches of the stream partitions,
then seeking them to their committed offsets, then resuming flow control, which clears every
stream queue. Flow is already active then (it was resumed to read the changelogs), so records
fetched between the first and the last step are either handled or cleared from a queue, and the
fetcher, still handing over records of the fetch before the seek, raises its read offset past
the seek and drops the re-read ones. The stream then goes on past records it never handled:
in the kill -9 test, a restarted worker handled offsets 658-684 of every input partition, then
689 (685-688 never reached it), and since Faust commits only contiguous acks it never committed
those partitions again (faust-streaming issue #596). Events were lost, and a later restart
found them late: triggers missing, others invented.

Here the seek comes first, while the stream partitions are still paused; then flow resumes
(the queues it clears hold nothing of them); only then are they fetched again, from the
committed offsets. The rest of each step is Faust's own, in Faust's order.

A partition the group never committed has no offset to seek to, and aiokafka leaves its
position where fetches left it. Records fetched for it while Faust held it paused are dropped
(Faust's fetcher yields only records of active partitions), so a survivor that took over
partitions its dead peer had never committed read none of the records waiting in them (the
100k rebalance test: share 2 and 3 and purchase 2 stayed at their end offsets, unhandled, and
their partitions' deadlines never fired). Such partitions are sought to their beginning, which
is what `consumer_auto_offset_reset="earliest"` asks for. Related: faust-streaming #216.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery


def skipped_offsets(offset: int, previous: int | None, committed: int | None) -> int:
    """How many records of a partition were skipped before `offset`: those after the last one
    handled (`previous`), or, for the first one handled since assignment, from the committed
    offset on (the next to handle; Faust records "never committed" as None or -1)."""
    if previous is not None:
        return max(0, offset - previous - 1)
    if committed is not None and committed >= 0:
        return max(0, offset - committed)
    return 0


class InOrderRecovery(Recovery):
    """Faust's recovery, resuming the streams as the module docstring says."""

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        if self.app.consumer_generation_id != generation_id:
            self.log.warning(
                f"Recovery rebalancing again app id "
                f"{self.app.consumer_generation_id} param {generation_id}"
            )
            return
        await self._seek_then_resume()
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")

    async def _resume_streams(self, generation_id: int = 0) -> None:
        """Nothing to recover: resume the streams, in the same order."""
        await self.app.on_rebalance_complete.send()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await self._seek_then_resume()
        self.tables.on_actives_ready()

    async def _seek_then_resume(self) -> None:
        app: Any = self.app
        consumer = app.consumer
        assignment = consumer.assignment()
        streams = {tp for tp in assignment if not self._is_changelog_tp(tp)}
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
            # aiokafka seeks only to committed offsets > 0: the others start at the beginning
            # (see the module docstring). An offset before the log start resets to it.
            for tp in sorted(streams):
                if not consumer._committed_offset.get(tp):
                    await consumer.seek(tp, 0)
        self.completed.set()
        app.flow_control.resume()  # clears the queues: none holds a stream record yet
        consumer.resume_flow()
        consumer.resume_partitions(streams)
        await app._fetcher.maybe_start()


class InOrderTableManager(TableManager):
    """Faust's table manager with `InOrderRecovery` (the app's `TableManager` setting)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = InOrderRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
