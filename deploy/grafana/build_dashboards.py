"""Write LinkWatch's Grafana dashboards (funnel, marketing, service) as JSON.

    .venv/bin/python deploy/grafana/build_dashboards.py              # rewrite dashboards/*.json
    .venv/bin/python deploy/grafana/build_dashboards.py --check      # exit 1 when out of date
    .venv/bin/python deploy/grafana/build_dashboards.py --journeys FILE --out DIR

The funnel board draws each journey's steps in order from the journeys file (the built-in one
by default): regenerate with `--journeys` for your own. The output is deterministic and
tests/test_dashboards.py checks that the checked-in files equal it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

from linkwatch.journeys import JourneySet, load_journeys

Json = dict[str, Any]
Query = tuple[str, str]  # (PromQL, legend)

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 39  # Grafana 10.4+ classic dashboard model
# The Prometheus datasource provisioning/ declares: every panel, query and variable names it.
DATASOURCE: Json = {"type": "prometheus", "uid": "prometheus"}
WIDTH = 24  # columns of Grafana's grid
_ME = "deploy/grafana/build_dashboards.py"


def steps(*colors: tuple[str, float | None]) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in colors]}


NEUTRAL = steps(("blue", None))
ALARM = steps(("green", None), ("red", 1))  # a gauge of things in alert: anything is bad
REDUCE = {"calcs": ["lastNotNull"], "fields": "", "values": False}


# ---------------------------------------------------------------------------------------------
# Panels


def _panel(kind: str, title: str, desc: str, queries: list[Query], unit: str) -> Json:
    targets: list[Json] = [
        {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
        for i, (expr, legend) in enumerate(queries)
    ]
    if kind != "timeseries":  # a figure over the whole time range: evaluated once, at its end
        for t in targets:
            t["instant"] = True
    return {
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": NEUTRAL}, "overrides": []},
    }


def stat(title: str, desc: str, expr: str, unit: str = "short", **kw: Any) -> Json:
    panel = _panel("stat", title, desc, [(expr, title)], unit)
    panel["fieldConfig"]["defaults"] |= kw  # thresholds, decimals
    panel["options"] = {"reduceOptions": REDUCE, "colorMode": "value", "graphMode": "none"}
    return panel


def bars(title: str, desc: str, queries: list[Query], unit: str = "short") -> Json:
    panel = _panel("bargauge", title, desc, queries, unit)
    panel["fieldConfig"]["defaults"] |= {"min": 0} | ({"max": 1} if unit == "percentunit" else {})
    panel["options"] = {
        "reduceOptions": REDUCE,
        "orientation": "horizontal",
        "displayMode": "gradient",
        "showUnfilled": True,
    }
    return panel


def series(title: str, desc: str, queries: list[Query], unit: str = "short", **kw: Any) -> Json:
    panel = _panel("timeseries", title, desc, queries, unit)
    custom: Json = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10}
    if "thresholds" in kw:  # drawn as coloured bands behind the line
        custom["thresholdsStyle"] = {"mode": "line+area"}
    panel["fieldConfig"]["defaults"] |= {"min": 0, "custom": custom} | kw
    panel["options"] = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel


class Board:
    """Panels placed left to right on the 24-column grid, wrapping, with ids 1, 2, ..."""

    def __init__(self) -> None:
        self.panels: list[Json] = []
        self._x = self._y = self._height = 0

    def row(self, title: str) -> None:
        self._newline()
        self._place({"type": "row", "title": title, "collapsed": False, "panels": []}, WIDTH, 1)
        self._newline()

    def add(self, panel: Json, w: int, h: int = 8) -> None:
        if self._x + w > WIDTH:
            self._newline()
        self._place(panel, w, h)

    def _place(self, panel: Json, w: int, h: int) -> None:
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": h, "w": w, "x": self._x, "y": self._y}
        self.panels.append(panel)
        self._x += w
        self._height = max(self._height, h)

    def _newline(self) -> None:
        self._y += self._height
        self._x = self._height = 0


def variable(name: str, query: str, multi: bool = True) -> Json:
    """A query variable; a multi-select one defaults to All (the regex `.*`)."""
    extra = {"allValue": ".*"} if multi else {}
    return {
        "name": name,
        "label": name.title(),
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 2,  # on every time range change
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "current": {},
        "options": [],
    } | extra


def dashboard(uid: str, title: str, desc: str, board: Board, **kw: Any) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": ["linkwatch"],
        "editable": True,
        "graphTooltip": 1,  # shared crosshair
        "timezone": "browser",
        "time": {"from": kw.get("since", "now-24h"), "to": "now"},
        "refresh": kw.get("refresh", "1m"),
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "links": [{"type": "dashboards", "tags": ["linkwatch"], "title": "LinkWatch"}],
        "annotations": {"list": []},
        "templating": {"list": kw.get("variables", [])},
        "panels": board.panels,
    }


# ---------------------------------------------------------------------------------------------
# PromQL. Everything is summed over workers (each owns some partitions; Prometheus adds
# `instance`). Figures over the time range use $__range, trends a trailing window.


def total(metric: str, where: str = "", window: str = "$__range", by: str = "") -> str:
    """How much a counter grew over `window`, summed (by some labels)."""
    selector = f"{metric}{{{where}}}" if where else metric
    return _sum(f"increase({selector}[{window}])", by)


def hourly(metric: str, by: str, where: str = "") -> str:
    return total(metric, where, "1h", by)


def per_second(metric: str, by: str = "") -> str:
    return _sum(f"rate({metric}[$__rate_interval])", by)


def quantile(q: float, histogram: str, window: str = "$__rate_interval") -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[{window}])))"


def _sum(expr: str, by: str) -> str:
    return f"sum by ({by}) ({expr})" if by else f"sum({expr})"


def ratio(num: str, den: str) -> str:
    return f"({num}) / ({den})"


# ---------------------------------------------------------------------------------------------
# Boards

J = 'journey=~"$journey"'
STARTED, REACHED = "linkwatch_journey_started_total", "linkwatch_journey_step_reached_total"
DROPPED, CONVERTED = "linkwatch_journey_dropped_off_total", "linkwatch_journey_converted_total"
RESOLVED, RECOVERY = "linkwatch_resolutions_total", "linkwatch_recovery_total"
FLOOR = "Returns count up to the recovery window (7d) later: recent figures are a floor."


def recovery_rate(group: str, window: str = "$__range") -> str:
    """Drop-offs of a group (treated: messaged, holdout: never messaged) that were resolved."""
    where = f'{J},group="{group}",outcome='
    return ratio(
        total(RECOVERY, where + '"resolved"', window),
        total(RECOVERY, where + '"dropped_off"', window),
    )


def funnel_board(journeys: JourneySet) -> Json:
    b = Board()
    b.row("Overview (selected time range)")
    b.add(stat("Started", "Journey instances started.", total(STARTED, J)), 4, 4)
    b.add(stat("Converted", "Instances that reached their last step.", total(CONVERTED, J)), 4, 4)
    conversion = ratio(total(CONVERTED, J), total(STARTED, J))
    b.add(stat("Conversion", "Converted / started.", conversion, "percentunit"), 4, 4)
    b.add(stat("Drop-offs", "Instances that stopped before a step.", total(DROPPED, J)), 4, 4)
    back = ratio(total(RESOLVED, J), total(DROPPED, J))
    desc = f"Drop-offs resolved by a return. {FLOOR}"
    b.add(stat("Recovery rate", desc, back, "percentunit"), 4, 4)
    uplift = f"{recovery_rate('treated')} - {recovery_rate('holdout')}"
    desc = f"Recovery rate of messaged users minus the holdout's: what triggers add. {FLOOR}"
    b.add(stat("Holdout uplift", desc, uplift, "percentunit"), 4, 4)

    for journey in journeys.journeys:  # the steps' order lives in the journeys file, not in labels
        b.row(f"Funnel: {journey.name}")
        names = [step.name for step in journey.steps]
        at = {s: total(REACHED, f'journey="{journey.name}",step="{s}"') for s in names}
        reach = [(at[s], f"{i}. {s}") for i, s in enumerate(names, 1)]
        desc, h = f"{journey.description or journey.name}: reached each step.", 2 + 2 * len(names)
        b.add(bars(f"{journey.name}: reach per step", desc, reach), 12, h)
        conv = [(ratio(at[nxt], at[this]), f"{this} → {nxt}") for this, nxt in pairwise(names)]
        desc = "Reached the next step / reached this one."
        b.add(bars(f"{journey.name}: step conversion", desc, conv, "percentunit"), 12, h)

    b.row("Drop-offs")
    causes = [(hourly(DROPPED, "journey, step, cause", J), "{{journey}} · {{step}} ({{cause}})")]
    desc = "By the step missed and its cause (which names the remedy a trigger hints at)."
    b.add(series("Drop-offs per hour by step and cause", desc, causes), 12)
    by_cause = [(total(DROPPED, J, by="cause"), "{{cause}}")]
    b.add(bars("Drop-offs by cause", "Over the time range.", by_cause), 6)
    missed = [(total(DROPPED, J, by="journey, step"), "{{journey}} · {{step}}")]
    b.add(bars("Drop-offs by step missed", "Over the time range.", missed), 6)
    daily = ratio(total(CONVERTED, J, "1d", "journey"), total(STARTED, J, "1d", "journey"))
    desc = "Converted / started over the trailing day."
    b.add(series("Conversion per journey (1d)", desc, [(daily, "{{journey}}")], "percentunit"), 12)
    active = [(f"sum by (journey) (linkwatch_active_instances{{{J}}})", "{{journey}}")]
    b.add(series("Open instances", "Journey instances in progress.", active), 12)

    b.row("Recovery and triggers")
    groups = [(recovery_rate(g, "1d"), g) for g in ("treated", "holdout")]
    desc = f"Resolved / dropped off over the trailing day; the gap is the uplift. {FLOOR}"
    b.add(series("Recovery rate: treated vs holdout (1d)", desc, groups, "percentunit"), 12)
    causes = [
        (ratio(total(RESOLVED, J, "1d", "cause"), total(DROPPED, J, "1d", "cause")), "{{cause}}")
    ]
    desc = f"Resolved / dropped off over the trailing day. {FLOOR}"
    b.add(series("Recovery rate by cause (1d)", desc, causes, "percentunit"), 12)
    sent = [(hourly("linkwatch_triggers_total", "type"), "{{type}}")]
    b.add(series("Triggers per hour", "Published, by type.", sent), 12)
    held = [(hourly("linkwatch_triggers_withheld_total", "type, reason"), "{{type}}: {{reason}}")]
    desc = "Kept back by suppression: holdout, cooldown, frequency cap, resolved while held."
    b.add(series("Withheld per hour", desc, held), 12)

    return dashboard(
        "linkwatch-funnel",
        "LinkWatch / Journey funnel",
        "Reach and drop-off per journey step and cause, conversion, recovery, holdout uplift.",
        b,
        variables=[variable("journey", f"label_values({STARTED}, journey)")],
    )


C, CUR = 'channel=~"$channel",campaign=~"$campaign"', 'currency="$currency"'
SHARES, CLICKS = "linkwatch_sound_shares_total", "linkwatch_traffic_clicks_total"
SALES, REVENUE = "linkwatch_sales_purchases_total", "linkwatch_sales_revenue_total"
# The field's healthy band for the private-domain share of revenue is 15-25%.
PRIVATE_BAND = steps(("red", None), ("green", 0.15), ("orange", 0.25))


def marketing_board(_: JourneySet) -> Json:
    b = Board()
    b.row("Sound, traffic, sales (selected time range)")
    b.add(stat("Shares (sound)", "Shares.", total(SHARES, C)), 4, 4)
    b.add(stat("Clicks (traffic)", "Clicks; fake traffic is left out.", total(CLICKS, C)), 4, 4)
    b.add(stat("Purchases (sales)", "Purchases.", total(SALES, C)), 4, 4)
    b.add(stat("Revenue ($currency)", "Purchase amounts.", total(REVENUE, f"{C},{CUR}")), 4, 4)
    conv = ratio(total(SALES, C), total(CLICKS, C))
    b.add(stat("Conversion", "Purchases / clicks.", conv, "percentunit"), 4, 4)
    aov = ratio(total(REVENUE, f"{C},{CUR}"), total(SALES, C))
    desc = "Revenue / purchases (exact when every purchase is in $currency)."
    b.add(stat("Average order ($currency)", desc, aov, decimals=2), 4, 4)

    b.row("Per channel")
    for title, metric in (("Sound", SHARES), ("Traffic", CLICKS), ("Sales", SALES)):
        per_hour = [(hourly(metric, "channel", C), "{{channel}}")]
        b.add(series(f"{title} per hour", "By channel.", per_hour), 8)
    conv = ratio(hourly(SALES, "channel", C), hourly(CLICKS, "channel", C))
    desc = "Purchases / clicks over the trailing hour."
    b.add(series("Conversion by channel (1h)", desc, [(conv, "{{channel}}")], "percentunit"), 12)
    money = [(hourly(REVENUE, "channel", f"{C},{CUR}"), "{{channel}}")]
    b.add(series("Revenue per hour ($currency)", "By channel.", money), 12)
    desc = "Top 10 over the time range. A worker labels the first 100 campaign ids, then other."
    top = [(f"topk(10, {total(REVENUE, f'{C},{CUR}', by='campaign')})", "{{campaign}}")]
    b.add(bars("Revenue by campaign ($currency)", desc, top), 12)
    top = [(f"topk(10, {total(CLICKS, C, by='campaign')})", "{{campaign}}")]
    b.add(bars("Clicks by campaign", desc, top), 12)

    b.row("Private domain (the brand's own pool: group chat, mini-program, moments)")
    mine, every = f'space="private",campaign=~"$campaign",{CUR}', f'campaign=~"$campaign",{CUR}'
    desc = "Revenue on the brand's own channels / all revenue. Healthy band 15-25% (green)."
    share = ratio(total(REVENUE, mine), total(REVENUE, every))
    band = {"thresholds": PRIVATE_BAND}
    b.add(stat("Private-domain share of revenue", desc, share, "percentunit", **band), 6)
    daily = [(ratio(total(REVENUE, mine, "1d"), total(REVENUE, every, "1d")), "private share")]
    b.add(series("Private-domain share (1d)", desc, daily, "percentunit", **band), 12)
    spaces = [(total(REVENUE, every, by="space"), "{{space}}")]
    b.add(bars("Revenue by space ($currency)", "private, public, offline.", spaces), 6)

    b.row("Fission: customers as salespeople")
    new_users, sharers = "linkwatch_fission_new_users_total", "linkwatch_fission_sharers_total"
    hop1 = 'hop="1"'
    desc = "New users brought by direct shares (hop 1) per user who shared for the first time."
    k = ratio(total(new_users, hop1), total(sharers))
    b.add(stat("K-factor", desc, k, "none", decimals=2), 4)
    daily = [(ratio(total(new_users, hop1, "1d"), total(sharers, window="1d")), "K-factor")]
    b.add(series("K-factor (1d)", desc, daily, "none"), 10)
    credited = [
        (hourly(f"linkwatch_fission_{what}_total", "hop"), f"{what}, hop {{{{hop}}}}")
        for what in ("share_clicks", "new_users", "purchases")
    ]
    desc = "Credited to the sharer, and up the referral chain (hop 2, 3)."
    b.add(series("Credited to sharers per hour", desc, credited), 10)
    shared = [(hourly("linkwatch_fission_shares_total", "target"), "{{target}}")]
    b.add(series("Shares per hour", "By target: group_chat, moments, direct, other.", shared), 8)
    money = [(hourly("linkwatch_fission_revenue_total", "hop", CUR), "hop {{hop}}")]
    b.add(series("Credited revenue per hour ($currency)", "By hop.", money), 8)
    lost = [(hourly("linkwatch_fission_unattributed_total", "what, reason"), "{{what}} {{reason}}")]
    desc = "Facts through a share that earned no credit: the user's own share, unknown share."
    b.add(series("Not credited per hour", desc, lost), 8)

    b.row("Broken links")
    for kind in ("link", "campaign"):
        now = f'sum(linkwatch_links_broken{{kind="{kind}"}})'
        title = f"{kind.title()}s broken"
        b.add(stat(title, f"{kind.title()}s in alert now.", now, thresholds=ALARM), 4)
    dead_ends, clicks = "linkwatch_link_dead_ends_total", "linkwatch_link_clicks_total"
    dead = ratio(hourly(dead_ends, "kind"), hourly(clicks, "kind"))
    desc = "Clicks whose landing failed (status >= 400) / clicks, over the trailing hour."
    b.add(series("Dead-end rate (1h)", desc, [(dead, "{{kind}}")], "percentunit"), 8)
    alerts = [(hourly("linkwatch_link_alerts_total", "kind, status"), "{{kind}} {{status}}")]
    b.add(series("Link alerts per hour", "broken and recovered.", alerts), 8)

    b.row("Community health")
    for what in ("silent", "losing_members"):
        now = f"sum(linkwatch_community_groups_{what})"
        title = f"Groups {what.replace('_', ' ')}"
        b.add(stat(title, "Group chats in this alert now.", now, thresholds=ALARM), 4)
    chat = [(hourly("linkwatch_community_chat_total", "action"), "{{action}}")]
    b.add(series("Group-chat actions per hour", "join, leave, message, mention, ...", chat), 8)
    alerts = [(hourly("linkwatch_community_alerts_total", "alert, status"), "{{alert}} {{status}}")]
    b.add(series("Community alerts per hour", "silent, losing_members.", alerts), 8)
    groups = ratio(total("linkwatch_community_revenue_total", CUR, "1d"), total(REVENUE, CUR, "1d"))
    desc = "Revenue of buyers last active in a group chat (within 7 days) / all revenue."
    b.add(series("Group-driven share of revenue (1d)", desc, [(groups, "")], "percentunit"), 12)

    b.row("Lifecycle tiers")
    tiers = [("sum by (tier) (linkwatch_tier_users)", "{{tier}}")]
    desc = "Users in each tier now (rebuilt from changes: restarts from 0 with a worker)."
    b.add(bars("Users per tier", desc, tiers), 6)
    changes = [(hourly("linkwatch_tier_changes_total", "to"), "to {{to}}")]
    b.add(series("Tier changes per hour", "Profile updates published, by new tier.", changes), 6)

    return dashboard(
        "linkwatch-marketing",
        "LinkWatch / Marketing",
        "Sound, traffic and sales per channel and campaign, private-domain share, fission, "
        "broken links, community health, lifecycle tiers.",
        b,
        since="now-7d",
        variables=[
            variable("channel", f"label_values({CLICKS}, channel)"),
            variable("campaign", f"label_values({CLICKS}, campaign)"),
            variable("currency", f"label_values({REVENUE}, currency)", multi=False),
        ],
    )


EVENTS, REJECTED = "linkwatch_events_total", "linkwatch_records_rejected_total"
DELAY = "linkwatch_deadline_fire_delay_seconds"
PAUSE = "linkwatch_commit_pause_seconds"


def service_board(_: JourneySet) -> Json:
    b = Board()
    b.row("Now")
    b.add(stat("Events/s", "Valid events in, all workers.", per_second(EVENTS), "ops"), 4, 4)
    bad = ratio(per_second(REJECTED), f"{per_second(EVENTS)} + {per_second(REJECTED)}")
    warn = steps(("green", None), ("orange", 0.01), ("red", 0.05))
    desc = "Share of input records dead-lettered."
    b.add(stat("Rejected", desc, bad, "percentunit", thresholds=warn), 4, 4)
    b.add(stat("Workers", "Workers reporting.", "count(linkwatch_partitions_assigned)"), 4, 4)
    desc = "Summed over workers: equals LINKWATCH_PARTITIONS when all are owned."
    b.add(stat("Partitions assigned", desc, "sum(linkwatch_partitions_assigned)"), 4, 4)
    desc = "Clock minus the slowest partition's watermark."
    b.add(stat("Max watermark lag", desc, "max(linkwatch_watermark_lag_seconds)", "s"), 4, 4)
    desc = "Clock at a drop-off trigger minus its deadline, p99 over 5m. Floor: the idle timeout."
    b.add(stat("Trigger delay p99", desc, quantile(0.99, DELAY, "5m"), "s"), 4, 4)

    b.row("Throughput")
    kinds = [(per_second(EVENTS, "kind"), "{{kind}}")]
    b.add(series("Events/s by kind", "Valid events in.", kinds, "ops"), 12)
    kafka = [
        (per_second("faust_messages_received_total"), "received"),
        (per_second("faust_total_sent_messages_total"), "sent"),
        (per_second("faust_total_error_messages_sent_total"), "send errors"),
    ]
    desc = "Consumed: inputs, ticks, signals. Produced: outputs and changelogs."
    b.add(series("Kafka records/s", desc, kafka, "ops"), 12)
    sent = [(per_second("faust_topic_messages_sent_total", "topic"), "{{topic}}")]
    desc = "Triggers, dead letters, signals, health, profiles, changelogs."
    b.add(series("Records/s sent by topic", desc, sent, "ops"), 12)
    channels = [(per_second(EVENTS, "channel"), "{{channel}}")]
    b.add(series("Events/s by channel", "Unknown channels count as other.", channels, "ops"), 12)

    b.row("Bad and discarded input")
    reasons = [(per_second(REJECTED, "reason"), "{{reason}}")]
    b.add(series("Rejected records/s by reason", "Each one is a dead letter.", reasons, "ops"), 12)
    discarded = [
        (per_second("linkwatch_events_duplicate_total"), "duplicate"),
        (per_second("linkwatch_events_late_total"), "late"),
        (per_second("linkwatch_flagged_events_total", "kind"), "fake traffic: {{kind}}"),
        (per_second("linkwatch_signals_refused_total", "reason"), "signal refused: {{reason}}"),
    ]
    desc = "Valid events kept out of journeys, and signals the entity stage did not apply."
    b.add(series("Discarded/s", desc, discarded, "ops"), 12)

    b.row("Lag and latency")
    lag = [("max by (partition) (linkwatch_watermark_lag_seconds)", "partition {{partition}}")]
    desc = "Clock minus watermark: grows while a partition is behind."
    b.add(series("Watermark lag by partition", desc, lag, "s"), 8)
    offsets = "faust_topic_partition_end_offset - faust_topic_partition_offset_commited"
    behind = [(f"sum by (topic) (clamp_min({offsets}, 0))", "{{topic}}")]
    desc = "End offset minus committed offset (Tansu, the dev broker, under-reports end offsets)."
    b.add(series("Consumer lag (records)", desc, behind), 8)
    levels = [("max by (level) (linkwatch_entity_watermark_lag_seconds)", "level {{level}}")]
    desc = (
        "Clock minus the entity stage's watermark per level (2: links, groups, shares; the "
        "highest: lifecycle tiers). Above the partitions' lag: how late its updates come."
    )
    b.add(series("Entity stage lag by level", desc, levels, "s"), 8)
    fire = [(quantile(q, DELAY), f"p{round(q * 100)}") for q in (0.5, 0.99)]
    b.add(series("Deadline → trigger delay", "Drop-offs fired live.", fire, "s"), 8)
    timings = [
        (quantile(0.99, "faust_events_runtime_ms"), "event processing p99"),
        (quantile(0.99, "faust_producer_send_latency"), "producer send p99"),
        (quantile(0.99, "faust_consumer_commit_latency"), "commit p99"),
    ]
    b.add(series("Kafka latencies", "Faust's timings.", timings, "ms"), 12)
    ops = [
        (per_second("faust_table_operations_total", "table, operation"), "{{table}} {{operation}}")
    ]
    b.add(series("Table operations/s", "Journey states, watermarks, entities.", ops, "ops"), 12)
    pause = [(quantile(q, PAUSE), f"p{round(q * 100)}") for q in (0.5, 0.99)]
    desc = "How long each offset commit held the agents (writing changed states); records wait."
    b.add(series("Commit pause", desc, pause, "s"), 12)
    state = [
        ("sum by (stage) (linkwatch_state_cached)", "{{stage}} decoded in memory"),
        ("sum by (stage) (linkwatch_state_keys)", "{{stage}} held"),
        ("sum(linkwatch_entity_records_held)", "entities that cannot be let go"),
    ]
    desc = (
        "Users and entities held, and of them decoded in memory: on rocksdb:// at most "
        "LINKWATCH_STATE_CACHE_MAX per partition, plus those changed since the last write "
        "(and entities with signals waiting: bounded by LINKWATCH_ENTITY_HELD_MAX)."
    )
    b.add(series("States held", desc, state), 12)
    chunks = [(per_second("linkwatch_catch_up_chunks_total"), "chunks/s")]
    desc = (
        "A watermark that jumped past more than LINKWATCH_FIRE_CHUNK deadlines at once "
        "(a drained backlog) being worked off, chunk by chunk."
    )
    b.add(series("Deadlines caught up in chunks", desc, chunks, "ops"), 12)
    paused = [(per_second("linkwatch_inputs_paused_seconds_total"), "share of the time")]
    desc = (
        "How much of the time the input topics were paused for the entity stage to let "
        "records go (more than LINKWATCH_ENTITY_HELD_MAX held: a backlog drains faster than "
        "the entity stage's levels follow)."
    )
    b.add(series("Inputs paused for the entity stage", desc, paused, "percentunit"), 12)

    b.row("Rebalances and reloads")
    # Faust's rebalance timing histogram counts each completed rebalance; its
    # faust_total_rebalances is, despite the name, a gauge of rebalances under way.
    done = [
        (total("faust_rebalance_done_latency_count", window="1h"), "completed"),
        (
            total("faust_assignment_operations_total", 'operation="error"', "1h"),
            "failed assignments",
        ),
    ]
    b.add(series("Rebalances per hour", "All workers.", done), 6)
    now = [
        ("max by (instance) (faust_total_rebalances)", "{{instance}} rebalancing"),
        ("max by (instance) (faust_total_rebalances_recovering)", "{{instance}} recovering tables"),
    ]
    b.add(series("Rebalancing now", "1 while a worker is in a rebalance.", now), 6)
    took = [(quantile(0.99, "faust_rebalance_done_latency", "1h"), "p99")]
    b.add(series("Rebalance duration (1h)", "Until the worker consumes again.", took, "ms"), 6)
    reloads = [(hourly("linkwatch_journeys_reloads_total", "outcome"), "{{outcome}}")]
    desc = "Changes to LINKWATCH_JOURNEYS_FILE: applied, or rejected as invalid."
    b.add(series("Journeys reloads per hour", desc, reloads), 6)

    return dashboard(
        "linkwatch-service",
        "LinkWatch / Service",
        "Throughput, bad input, lag, trigger latency, rebalances and reloads of the workers.",
        b,
        since="now-3h",
        refresh="30s",
    )


BOARDS: dict[str, Callable[[JourneySet], Json]] = {
    "funnel": funnel_board,
    "marketing": marketing_board,
    "service": service_board,
}


def render(journeys: JourneySet) -> dict[str, str]:
    """File name → exact content."""
    return {
        f"{name}.json": json.dumps(build(journeys), indent=2, ensure_ascii=False) + "\n"
        for name, build in BOARDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write LinkWatch's Grafana dashboards.")
    parser.add_argument("--journeys", type=Path, help="journeys file (default: the built-in one)")
    parser.add_argument(
        "--out", type=Path, default=OUT_DIR, help="directory (default: %(default)s)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ")
    args = parser.parse_args(argv)
    files = render(load_journeys(args.journeys))
    if args.check:
        stale = [n for n, text in files.items() if _read(args.out / n) != text]
        for name in stale:
            print(f"{args.out / name} is out of date: run {_ME}", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, "utf-8")
    print(f"wrote {', '.join(files)} to {args.out}")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text("utf-8") if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())
