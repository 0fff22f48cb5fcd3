"""Prometheus metrics of the live worker. Labels are bounded sets: never a user id."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from linkwatch.commerce import CampaignLabels, measure_of, space_of
from linkwatch.engine import OPEN_CHANGE, Output, Transition, Verdict
from linkwatch.entities import entity_metric_specs
from linkwatch.errors import RejectReason
from linkwatch.events import CHANNELS, Event, EventBase, PurchaseEvent
from linkwatch.profile import BotFlagged, FlaggedEvent
from linkwatch.signals import Measure, Signal
from linkwatch.suppression import Withheld, uplift_group
from linkwatch.triggers import Resolution, Trigger

KNOWN_CHANNELS: Final = frozenset(CHANNELS)


class Metrics:
    """All LinkWatch metrics, registered on one registry (one per app, so tests can build
    several apps in a process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._children: dict[tuple[int, tuple[Any, ...]], Any] = {}
        self.registry = registry
        self.events = Counter(
            "linkwatch_events_total",
            "Valid events received, by kind and channel",
            ["kind", "channel"],
            registry=registry,
        )
        self.rejected = Counter(
            "linkwatch_records_rejected_total",
            "Input records dead-lettered, by reason (each rejected event of a batch record "
            "counts once)",
            ["reason"],
            registry=registry,
        )
        # Sound / traffic / sales: one event, one count, labelled the same way across the three.
        commerce_labels = ["channel", "space", "campaign"]
        self.sound = Counter(
            "linkwatch_sound_shares_total", "Shares (sound)", commerce_labels, registry=registry
        )
        self.traffic = Counter(
            "linkwatch_traffic_clicks_total", "Clicks (traffic)", commerce_labels, registry=registry
        )
        self.sales = Counter(
            "linkwatch_sales_purchases_total",
            "Purchases (sales)",
            commerce_labels,
            registry=registry,
        )
        self.revenue = Counter(
            "linkwatch_sales_revenue_total",
            "Purchase amounts (sales), per currency",
            [*commerce_labels, "currency"],
            registry=registry,
        )
        self._measures = {"sound": self.sound, "traffic": self.traffic, "sales": self.sales}
        self._campaigns = CampaignLabels()
        self.duplicates = Counter(
            "linkwatch_events_duplicate_total", "Events ignored as duplicates", registry=registry
        )
        self.late = Counter(
            "linkwatch_events_late_total",
            "Events at or behind the watermark (counted, not applied to journeys)",
            registry=registry,
        )
        self.started = Counter(
            "linkwatch_journey_started_total",
            "Journey instances started",
            ["journey"],
            registry=registry,
        )
        self.reached = Counter(
            "linkwatch_journey_step_reached_total",
            "Journey steps reached",
            ["journey", "step"],
            registry=registry,
        )
        self.dropped = Counter(
            "linkwatch_journey_dropped_off_total",
            "Instances that dropped off before a step, by the step missed and its cause",
            ["journey", "step", "cause"],
            registry=registry,
        )
        self.converted = Counter(
            "linkwatch_journey_converted_total",
            "Instances that reached their last step",
            ["journey"],
            registry=registry,
        )
        self.exited = Counter(
            "linkwatch_journey_exited_total",
            "Instances ended by an exit match",
            ["journey", "step"],
            registry=registry,
        )
        self.retired = Counter(
            "linkwatch_journey_retired_total",
            "Open instances ended because a reload removed or changed their journey",
            ["journey"],
            registry=registry,
        )
        self.triggers = Counter(
            "linkwatch_triggers_total", "Triggers published, by type", ["type"], registry=registry
        )
        self.resolutions = Counter(
            "linkwatch_resolutions_total",
            "Drop-offs whose user came back to the missed step within the recovery window",
            ["journey", "step", "cause"],
            registry=registry,
        )
        self.recovery = Counter(
            "linkwatch_recovery_total",
            "Drop-offs and their resolutions by group: holdout (never messaged) or treated; "
            "recovery rate per group = resolved / dropped_off, uplift = treated - holdout",
            ["journey", "cause", "group", "outcome"],
            registry=registry,
        )
        self.holdout_percent = 0.0  # of the journeys running (suppression's holdout)
        self.withheld = Counter(
            "linkwatch_triggers_withheld_total",
            "Triggers and resolutions suppression kept back, by type and reason "
            "(holdout, cooldown, frequency_cap, resolved_while_held)",
            ["type", "reason"],
            registry=registry,
        )
        self.active = Gauge(
            "linkwatch_active_instances",
            "Open journey instances on this worker",
            ["journey"],
            registry=registry,
        )
        self.watermark_lag = Gauge(
            "linkwatch_watermark_lag_seconds",
            "Wall clock minus the partition's watermark",
            ["partition"],
            registry=registry,
        )
        self.entity_watermark_lag = Gauge(
            "linkwatch_entity_watermark_lag_seconds",
            "Wall clock minus the entity stage's watermark at each level, the most behind of "
            "the signals partitions this worker holds (NaN before one has any): how late its "
            "link health, sharer and tier updates come; level 2 follows the journeys' "
            "watermarks, each level above follows the one below it",
            ["level"],
            registry=registry,
        )
        self.partitions = Gauge(
            "linkwatch_partitions_assigned", "Partitions this worker processes", registry=registry
        )
        self.state_keys = Gauge(
            "linkwatch_state_keys",
            "Keys this worker holds in state: users (journeys) and entities (links, groups, "
            "shares, sharers); bounded by the TTLs under steady traffic",
            ["stage"],
            registry=registry,
        )
        self.state_cached = Gauge(
            "linkwatch_state_cached",
            "States held decoded in memory, by stage (users, entities): all of "
            "linkwatch_state_keys, or on rocksdb:// at most LINKWATCH_STATE_CACHE_MAX per "
            "partition plus those changed since the last write (and entities with signals "
            "waiting); users counting markers of users known to have none",
            ["stage"],
            registry=registry,
        )
        self.state_reads = Gauge(
            "linkwatch_state_reads",
            "Reads of RocksDB for states not held in memory when needed (a new key's finds "
            "none), by stage, by the partitions this worker holds now",
            ["stage"],
            registry=registry,
        )
        self.entity_held = Gauge(
            "linkwatch_entity_records_held",
            "Entity records this worker holds in memory that cannot be let go (changed since "
            "the last write, or with signals waiting for a level's watermark); on rocksdb:// "
            "past LINKWATCH_ENTITY_HELD_MAX the input topics wait for the entity stage",
            registry=registry,
        )
        self.inputs_paused = Counter(
            "linkwatch_inputs_paused_seconds_total",
            "Seconds this worker fetched nothing from the input topics while the entity stage "
            "let records go (linkwatch_entity_records_held past LINKWATCH_ENTITY_HELD_MAX)",
            registry=registry,
        )
        self.catch_up_chunks = Counter(
            "linkwatch_catch_up_chunks_total",
            "Chunks of LINKWATCH_FIRE_CHUNK deadlines and expiries decided after a first one, "
            "each once the triggers of the one before were delivered and its states written "
            "(a watermark that jumped past more than that at once: a drained backlog)",
            registry=registry,
        )
        self.state_oversized = Counter(
            "linkwatch_state_oversized_total",
            "State values too big for a changelog record, kept in memory only (a crash loses "
            "their changes since the last write), by kind: user, group, link, ...",
            ["kind"],
            registry=registry,
        )
        self.recovery_reseeks = Counter(
            "linkwatch_recovery_reseeks_total",
            "Changelog partitions sought again because table recovery read nothing from them "
            "for LINKWATCH_RECOVERY_STALL_TIMEOUT",
            registry=registry,
        )
        self.unfinished_commits = Counter(
            "linkwatch_unfinished_commits_total",
            "Unfinished commits found at the end of a table recovery (a worker stopped in the "
            "middle of writing one): their records dropped, the keys written again as restored",
            ["table"],
            registry=registry,
        )
        self.unfinished_commit_records = Counter(
            "linkwatch_unfinished_commit_records_total",
            "Changelog records of unfinished commits dropped at the end of a table recovery",
            ["table"],
            registry=registry,
        )
        self.input_gaps = Counter(
            "linkwatch_input_gaps_total",
            "Input records never handed to this worker: offsets skipped after the last one "
            "handled, or after the committed one (should stay 0; a transactional producer's "
            "commit markers also count)",
            registry=registry,
        )
        self.deadline_delay = Histogram(
            "linkwatch_deadline_fire_delay_seconds",
            "Wall clock at which a drop-off fired minus its deadline (real-time traffic)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.commit_pause = Histogram(
            "linkwatch_commit_pause_seconds",
            "How long each offset commit held the agents (while it wrote their changed states "
            "and Faust chose the offsets): records arriving then wait",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self._active_counts: dict[str, int] = {}
        self.flagged_events = Counter(
            "linkwatch_flagged_events_total",
            "Applied events of users flagged as fake traffic (kept out of journeys, triggers "
            "and commerce), by kind",
            ["kind"],
            registry=registry,
        )
        self.bot_flags = Counter(
            "linkwatch_bot_flags_total",
            "Users flagged as fake traffic (a bot-like click burst)",
            registry=registry,
        )
        self.signals_refused = Counter(
            "linkwatch_signals_refused_total",
            "Signals the entity stage did not apply: redelivered (duplicate) or late",
            ["reason"],
            registry=registry,
        )
        # What the entity logics measure (links, communities, fission, tiers).
        self.entity_metrics: dict[str, Counter | Gauge] = {}
        for spec in entity_metric_specs():
            kind = Counter if spec.type == "counter" else Gauge
            name = f"linkwatch_{spec.name}"
            if spec.type == "counter":
                name = name.removesuffix("_total")  # the client adds it back
            self.entity_metrics[spec.name] = kind(
                name, spec.help, list(spec.labels), registry=registry
            )

    def _child(self, metric: Any, *labels: Any) -> Any:
        """`metric.labels(*labels)`, looked up once: prometheus-client checks and joins the
        labels on every call, and these are counted for every event. Label sets are bounded
        (known channels, capped campaigns, the journeys' names), so the cache is too."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def count_event(self, event: Event, verdict: Verdict) -> None:
        channel = event.channel if event.channel in KNOWN_CHANNELS else "other"
        self._child(self.events, event.kind, channel).inc()
        if verdict is Verdict.DUPLICATE:
            self.duplicates.inc()
            return  # the same event again: not more traffic or sales
        if verdict is Verdict.LATE:
            self.late.inc()  # too late for journeys, but real traffic all the same
            self._count_commerce(event)

    def _count_commerce(self, event: Event) -> None:
        measure = measure_of(event)
        if measure is None:
            return
        channel = event.channel if event.channel in KNOWN_CHANNELS else "other"
        labels = (channel, space_of(event.channel), self._campaigns.label(event.campaign_id))
        self._child(self._measures[measure], *labels).inc()
        if isinstance(event, PurchaseEvent):
            self._child(self.revenue, *labels, event.currency).inc(float(event.amount))

    def count_measures(self, measures: Iterable[Measure]) -> None:
        for measure in measures:
            metric = self.entity_metrics.get(measure.name)
            if metric is None:
                continue  # not declared by its logic: a bug, but not worth a stopped stream
            child = self._child(metric, *measure.labels) if measure.labels else metric
            child.inc(measure.amount)

    def count_unfinished_commit(self, table: str, partition: int, records: int, keys: int) -> None:
        """A table recovery dropped an unfinished commit (`commit_table`)."""
        self.unfinished_commits.labels(table).inc()
        self.unfinished_commit_records.labels(table).inc(records)

    def count_rejected(self, reason: RejectReason) -> None:
        self._child(self.rejected, reason.value).inc()

    def count_outputs(self, outputs: Iterable[Output]) -> None:
        for out in outputs:
            if isinstance(out, EventBase):  # real traffic, in event-time order (see engine.Output)
                self._count_commerce(out)
            elif isinstance(out, Trigger):
                self._child(self.triggers, out.type).inc()
            elif isinstance(out, Resolution):
                self._child(self.resolutions, out.journey, out.missed_step, out.cause.value).inc()
                self._child(
                    self.recovery, out.journey, out.cause.value, "treated", "resolved"
                ).inc()
            elif isinstance(out, Withheld):
                record = out.record
                self._child(self.withheld, record.type, out.reason).inc()
                if isinstance(record, Resolution):
                    group = "holdout" if out.reason == "holdout" else "treated"
                    cause = record.cause.value
                    self._child(self.recovery, record.journey, cause, group, "resolved").inc()
                elif out.reason == "resolved_while_held" and record.journey:
                    # Back before the quiet hours ended: recovered, just never messaged.
                    cause = record.cause.value
                    self._child(self.recovery, record.journey, cause, "treated", "resolved").inc()
            elif isinstance(out, FlaggedEvent | BotFlagged | Signal):  # signals: the entity stage
                if isinstance(out, FlaggedEvent):
                    self._child(self.flagged_events, out.event.kind).inc()
                elif isinstance(out, BotFlagged):
                    self.bot_flags.inc()
            else:
                self._count_transition(out)

    def _count_transition(self, t: Transition) -> None:
        if t.outcome == "started":
            self._child(self.started, t.journey).inc()
            self._child(self.reached, t.journey, t.step).inc()
        elif t.outcome == "reached":
            self._child(self.reached, t.journey, t.step).inc()
        elif t.outcome == "converted":
            self._child(self.converted, t.journey).inc()
        elif t.outcome == "exited":
            self._child(self.exited, t.journey, t.step).inc()
        elif t.outcome == "retired":
            self._child(self.retired, t.journey).inc()
        else:
            self._child(self.dropped, t.journey, t.step, t.cause or "").inc()
            if t.trigger is not None:
                group = uplift_group(t.trigger.user_id, self.holdout_percent)
                self._child(self.recovery, t.journey, t.cause or "", group, "dropped_off").inc()
        if OPEN_CHANGE[t.outcome]:
            self._add_active(t.journey, OPEN_CHANGE[t.outcome])

    def _add_active(self, journey: str, delta: int) -> None:
        self._active_counts[journey] = self._active_counts.get(journey, 0) + delta
        self._child(self.active, journey).set(self._active_counts[journey])

    def forget_partition(self, partition: int) -> None:
        with suppress(KeyError):  # never reported
            self.watermark_lag.remove(str(partition))

    def set_active(self, counts: dict[str, int]) -> None:
        """Reset open-instance counts (after a rebalance, from the recovered states)."""
        for journey in set(self._active_counts) | set(counts):
            self._active_counts[journey] = counts.get(journey, 0)
            self._child(self.active, journey).set(self._active_counts[journey])
