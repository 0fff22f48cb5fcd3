"""Faust's Prometheus sensor, with its per-record label lookups done once.

Faust's `PrometheusMonitor` is called for every record read, every stream event, every table
write and every record sent, and each call looks its labelled child up again:
`metric.labels(...)` validates and joins the label values and takes a lock, and the stream's
label is re-normalised with a regular expression on every event. A profile of the worker at
full load put about 4% of its time there (`bench/service.py --profile-worker`). This
subclass exports exactly the same metrics, with the same values, and keeps the children it
looked up: the label sets are few and fixed (topics, partitions, streams, tables).
"""

from __future__ import annotations

from typing import Any

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP, AppT, CollectionT, EventT, Message, ProducerT, StreamT
from faust.types.tuples import PendingMessage
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class CachedPrometheusMonitor(PrometheusMonitor):
    """`PrometheusMonitor` whose per-record hooks reuse the labelled children they found."""

    def __init__(self, metrics: FaustMetrics, **kwargs: Any) -> None:
        super().__init__(metrics=metrics, **kwargs)
        self._label_children: dict[tuple[int, tuple[Any, ...]], Any] = {}
        self._stream_children: dict[int, tuple[StreamT[Any], Any]] = {}

    def _child(self, metric: Any, *values: Any) -> Any:
        """`metric.labels(*values)`, looked up once (label values in declaration order)."""
        key = (id(metric), values)
        child = self._label_children.get(key)
        if child is None:
            child = self._label_children[key] = metric.labels(*values)
        return child

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        Monitor.on_message_in(self, tp, offset, message)
        metrics = self._metrics
        metrics.messages_received.inc()
        metrics.active_messages.inc()
        self._child(metrics.messages_received_per_topics, tp.topic).inc()
        self._child(metrics.messages_received_per_topics_partition, tp.topic, tp.partition).set(
            offset
        )

    def on_stream_event_in(
        self, tp: TP, offset: int, stream: StreamT[Any], event: EventT[Any]
    ) -> dict[str, Any] | None:
        state = Monitor.on_stream_event_in(self, tp, offset, stream, event)
        metrics = self._metrics
        metrics.total_events.inc()
        metrics.total_active_events.inc()
        # Keyed by the stream object, kept alive with its child so the id is never reused.
        found = self._stream_children.get(id(stream))
        if found is None or found[0] is not stream:
            label = f"stream.{self._stream_label(stream)}.events"
            found = (stream, metrics.total_events_per_stream.labels(stream=label))
            self._stream_children[id(stream)] = found
        found[1].inc()
        return state

    def on_table_get(self, table: CollectionT, key: Any) -> None:
        Monitor.on_table_get(self, table, key)
        self._table_operation(table, self.KEYS_RETRIEVED)

    def on_table_set(self, table: CollectionT, key: Any, value: Any) -> None:
        Monitor.on_table_set(self, table, key, value)
        self._table_operation(table, self.KEYS_UPDATED)

    def on_table_del(self, table: CollectionT, key: Any) -> None:
        Monitor.on_table_del(self, table, key)
        self._table_operation(table, self.KEYS_DELETED)

    def _table_operation(self, table: CollectionT, operation: str) -> None:
        self._child(self._metrics.table_operations, f"table.{table.name}", operation).inc()

    def on_send_initiated(
        self,
        producer: ProducerT,
        topic: str,
        message: PendingMessage,
        keysize: int,
        valsize: int,
    ) -> Any:
        self._child(self._metrics.topic_messages_sent, f"topic.{topic}").inc()
        return Monitor.on_send_initiated(self, producer, topic, message, keysize, valsize)

    def on_tp_commit(self, tp_offsets: Any) -> None:
        Monitor.on_tp_commit(self, tp_offsets)
        metric = self._metrics.topic_partition_offset_commited
        for tp, offset in tp_offsets.items():
            self._child(metric, tp.topic, tp.partition).set(offset)

    def track_tp_end_offset(self, tp: TP, offset: int) -> None:
        Monitor.track_tp_end_offset(self, tp, offset)
        self._child(self._metrics.topic_partition_end_offset, tp.topic, tp.partition).set(offset)

    def _clear_partition_related_metrics(self) -> None:
        # Upstream clears these metrics' children on a rebalance: drop what we hold of them.
        super()._clear_partition_related_metrics()
        self._label_children.clear()
        self._stream_children.clear()


def setup_faust_sensor(app: AppT, registry: CollectorRegistry, name_prefix: str = "faust") -> None:
    """`faust.sensors.prometheus.setup_prometheus_sensors`, with the cached monitor: Faust's
    metrics in `registry`, served with the rest of it at `/metrics`."""
    app.monitor = CachedPrometheusMonitor(metrics=FaustMetrics.create(registry, name_prefix))

    @app.page("/metrics")
    async def metrics_handler(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
