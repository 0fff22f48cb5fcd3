"""The cached Faust sensor exports what Faust's own Prometheus sensor does, value for value."""

from __future__ import annotations

from typing import Any

import pytest
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP, Message
from prometheus_client import CollectorRegistry

from linkwatch.faust_sensor import CachedPrometheusMonitor

# Timings (latency histograms) differ between two runs; everything else must not.
TIMED = ("latency", "runtime")


class FakeTask:
    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name


class FakeStream:
    """What the monitors read of a stream: its label and the task that owns it."""

    def __init__(self, label: str) -> None:
        self.shortlabel = f"Stream: {label}"
        self.task_owner = FakeTask(f"task-{label}")

    def __str__(self) -> str:
        return self.shortlabel


class FakeTable:
    def __init__(self, name: str) -> None:
        self.name = name


def message(tp: TP, offset: int) -> Message:
    return Message(tp.topic, tp.partition, offset, 0.0, 0, None, b"k", b"v", None)


def drive(monitor: PrometheusMonitor, rounds: int) -> None:
    """The hooks Faust calls per record, per event, per table write and per send, as a worker
    reading two topics of two partitions through two streams would call them."""
    tps = [TP("clicks", 0), TP("clicks", 1), TP("ticks", 0)]
    streams = [FakeStream("journeys_agent"), FakeStream("Entities-Agent.x")]
    tables = [FakeTable("lw-states"), FakeTable("lw-entities")]
    for n in range(rounds):
        tp = tps[n % len(tps)]
        monitor.on_message_in(tp, n, message(tp, n))
        state = monitor.on_stream_event_in(tp, n, streams[n % 2], None)  # type: ignore[arg-type]
        monitor.on_stream_event_out(tp, n, streams[n % 2], None, state)  # type: ignore[arg-type]
        monitor.on_table_set(tables[n % 2], b"k", b"v")  # type: ignore[arg-type]
        if n % 7 == 0:
            monitor.on_table_del(tables[0], b"k")  # type: ignore[arg-type]
            monitor.on_table_get(tables[1], b"k")  # type: ignore[arg-type]
        monitor.on_send_initiated(None, f"out-{n % 3}", None, 1, 1)  # type: ignore[arg-type]
        if n % 50 == 49:
            monitor.on_tp_commit(dict.fromkeys(tps, n))
            monitor.track_tp_end_offset(tp, n + 1)
        if n == rounds // 2:  # a rebalance clears the per-partition metrics
            monitor._clear_partition_related_metrics()


def exported(monitor_class: type[PrometheusMonitor], rounds: int) -> dict[Any, float]:
    registry = CollectorRegistry()
    monitor = monitor_class(metrics=FaustMetrics.create(registry, "faust"))
    drive(monitor, rounds)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not any(word in sample.name for word in TIMED) and not sample.name.endswith("_created")
    }


@pytest.mark.parametrize("rounds", [3, 60, 301])
def test_the_cached_sensor_exports_what_faust_s_own_does(rounds: int) -> None:
    theirs = exported(PrometheusMonitor, rounds)
    ours = exported(CachedPrometheusMonitor, rounds)
    assert ours == theirs
    # The comparison covers the per-record metrics, not just empty ones: the sends since the
    # rebalance half-way (it clears the per-topic metrics).
    sent = {k: v for k, v in ours.items() if k[0] == "faust_topic_messages_sent_total"}
    assert sum(sent.values()) == rounds - (rounds // 2 + 1)
    assert ours[("faust_total_events_total", ())] == rounds


def test_children_looked_up_after_a_rebalance_count_again() -> None:
    """A rebalance removes the per-partition children from their metrics: a child kept from
    before would count into nothing."""
    registry = CollectorRegistry()
    monitor = CachedPrometheusMonitor(metrics=FaustMetrics.create(registry, "faust"))
    tp = TP("clicks", 3)
    monitor.on_message_in(tp, 5, message(tp, 5))
    monitor._clear_partition_related_metrics()
    monitor.on_message_in(tp, 9, message(tp, 9))
    offset = registry.get_sample_value(
        "faust_messages_received_per_topics_partition", {"topic": "clicks", "partition": "3"}
    )
    assert offset == 9
