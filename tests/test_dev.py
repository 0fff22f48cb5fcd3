"""`linkwatch dev` without a broker: the demo journeys, the compressed traffic, and the view."""

from __future__ import annotations

import io
import itertools
from dataclasses import replace
from datetime import datetime
from importlib import resources

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console

from linkwatch.codec import decode_event
from linkwatch.dev import (
    DEMO_JOURNEYS_FILE,
    DISORDER_MS,
    TIME_SCALE,
    WINDOW_MS,
    FunnelRow,
    Snapshot,
    TriggerRow,
    ViewData,
    demo_traffic,
    events_per_second,
    funnel,
    parse_metrics,
    render,
    run_dev,
    summary_line,
    trigger_row,
)
from linkwatch.engine import Transition, Verdict
from linkwatch.errors import RecordRejected, RejectReason
from linkwatch.journeys import JourneySet, load_journeys, parse_journeys
from linkwatch.metrics import Metrics
from linkwatch.replay import replay_lines
from linkwatch.simulate import generate
from linkwatch.triggers import DROPOFF_CAUSES, Cause, Trigger, TriggerContext
from tests.builders import raw

T0 = 1_732_233_600_000  # 2024-11-22T00:00:00Z
MINUTE = 60_000
CART = "cart_to_purchase"


@pytest.fixture(scope="module")
def demo() -> JourneySet:
    """The demo journeys as shipped: read from the package, by the name `run_dev` uses."""
    text = resources.files("linkwatch").joinpath(DEMO_JOURNEYS_FILE).read_text("utf-8")
    return parse_journeys(text, source=DEMO_JOURNEYS_FILE)


# -- the demo journeys ---------------------------------------------------------------------------


def test_demo_journeys_are_the_default_ones_sixty_times_faster(demo: JourneySet) -> None:
    default = load_journeys()
    assert all(step.within_ms % 60 == 0 for j in default.journeys for step in j.steps)
    scaled = replace(
        default,
        allowed_lateness_ms=2000,
        recovery_window_ms=default.recovery_window_ms // 60,
        suppression=replace(
            default.suppression,
            frequency_window_ms=default.suppression.frequency_window_ms // 60,
            cooldown_ms=default.suppression.cooldown_ms // 60,
            quiet_start_min=None,  # a demo runs now, whatever the hour
            quiet_end_min=None,
        ),
        retention=replace(
            default.retention,
            not_retained_after_ms=default.retention.not_retained_after_ms // 60,
            dormant_after_ms=default.retention.dormant_after_ms // 60,
            profile_ttl_ms=default.retention.profile_ttl_ms // 60,
        ),
        fake_traffic=replace(
            default.fake_traffic,
            burst_window_ms=default.fake_traffic.burst_window_ms // 60,
            min_dwell_ms=default.fake_traffic.min_dwell_ms // 60,
            flag_for_ms=default.fake_traffic.flag_for_ms // 60,
        ),
        links=replace(
            default.links,
            window_ms=default.links.window_ms // 60,
            bucket_ms=default.links.bucket_ms // 60,
        ),
        communities=replace(
            default.communities,
            window_ms=default.communities.window_ms // 60,
            bucket_ms=default.communities.bucket_ms // 60,
            revenue_window_ms=default.communities.revenue_window_ms // 60,
            silent_after_ms=default.communities.silent_after_ms // 60,
            forget_after_ms=default.communities.forget_after_ms // 60,
        ),
        fission=replace(
            default.fission,
            attribution_window_ms=default.fission.attribution_window_ms // 60,
        ),
        # Tiers count whole days: only new_for is scaled.
        tiers=replace(default.tiers, new_for_ms=default.tiers.new_for_ms // 60),
        journeys=tuple(
            replace(
                journey,
                steps=tuple(
                    replace(step, within_ms=step.within_ms // 60) for step in journey.steps
                ),
            )
            for journey in default.journeys
        ),
    )
    # Names, descriptions, steps, matchers (kinds and conditions), causes, remedies, exits.
    assert demo == scaled
    assert 1 / TIME_SCALE == 60


# -- the compressed traffic ----------------------------------------------------------------------


def event_ms(rfc3339: str) -> int:
    return int(datetime.fromisoformat(rfc3339).timestamp() * 1000)


def test_compressed_traffic_drops_off_for_every_cause_within_minutes(demo: JourneySet) -> None:
    triggers: list[Trigger] = []
    records = generate(users=500, start_ms=T0, time_scale=TIME_SCALE, journeys=demo)
    replay_lines(records, demo, close_open=True, on_trigger=triggers.append)
    first: dict[Cause, int] = {}
    for trigger in triggers:
        if trigger.type not in ("dropoff", "dead_end"):
            continue  # the retention loop runs on days, not minutes
        first[trigger.cause] = min(first.get(trigger.cause, 1 << 62), event_ms(trigger.event_time))
    assert set(first) == {*DROPOFF_CAUSES, Cause.DEAD_END}
    assert max(first.values()) - T0 <= 3 * MINUTE
    # Every step of every journey sees drop-offs, as with the default journeys at full length.
    missed = {(t.journey, t.missed_step) for t in triggers if t.type == "dropoff"}
    assert missed == {(j.name, step.name) for j in demo.journeys for step in j.steps[1:]}


def test_time_scale_must_compress_time() -> None:
    with pytest.raises(ValueError, match="time_scale"):
        generate(start_ms=T0, time_scale=0)
    with pytest.raises(ValueError, match="time_scale"):
        generate(start_ms=T0, time_scale=2)


def test_demo_traffic_keeps_new_populations_coming_in_event_time_order(
    demo: JourneySet,
) -> None:
    traffic = demo_traffic(seed=7, users=30, start_ms=T0, journeys=demo)
    records = list(itertools.takewhile(lambda item: item[0] < T0 + 4 * WINDOW_MS, traffic))
    newest = T0
    users: dict[str, set[str]] = {}
    for ts, record in records:
        assert ts >= newest - DISORDER_MS
        newest = max(newest, ts)
        try:
            event = decode_event(record)
        except RecordRejected:
            continue
        assert event.ts == ts
        population = event.user_id.split("-")[0]
        # Each population starts one window after the one before.
        assert ts >= T0 + (int(population.removeprefix("u")) - 7) * WINDOW_MS
        users.setdefault(population, set()).add(event.user_id)
    assert set(users) == {"u7", "u8", "u9", "u10"}
    assert len(users["u7"]) == len(users["u8"]) == 30


# -- metrics text -> view ------------------------------------------------------------------------


def metrics_text() -> str:
    """What a worker's /metrics says after some traffic, made by the worker's own Metrics."""
    metrics = Metrics(CollectorRegistry())
    for n in range(40):
        metrics.count_event(decode_event(raw("click", event_id=f"c{n}")), Verdict.ACCEPTED)
    metrics.count_event(decode_event(raw("purchase", channel="app")), Verdict.LATE)
    metrics.count_event(decode_event(raw("share", channel="moments")), Verdict.DUPLICATE)
    metrics.count_rejected(RejectReason.INVALID_JSON)
    metrics.count_rejected(RejectReason.INVALID_JSON)
    metrics.count_rejected(RejectReason.MISSING_FIELD)
    outputs = [Transition(CART, "started", "cart") for _ in range(10)]
    outputs += [Transition(CART, "reached", "checkout") for _ in range(6)]
    outputs += [Transition(CART, "dropped_off", "checkout", Cause.INDIFFERENT) for _ in range(3)]
    outputs += [Transition(CART, "reached", "purchase"), Transition(CART, "converted", "purchase")]
    outputs += [Transition(CART, "dropped_off", "purchase", Cause.DISTRUST)]
    metrics.count_outputs(outputs)
    metrics.triggers.labels("dropoff").inc(4)
    metrics.triggers.labels("dead_end").inc(2)
    metrics.watermark_lag.labels("0").set(1.5)
    metrics.watermark_lag.labels("1").set(2.25)
    return generate_latest(metrics.registry).decode()


def test_parse_metrics_reads_the_workers_numbers() -> None:
    snapshot = parse_metrics(metrics_text())
    assert snapshot.events == 42
    assert snapshot.rejected == {"invalid_json": 2, "missing_field": 1}
    assert (snapshot.late, snapshot.duplicate) == (1, 1)
    assert snapshot.triggers == {"dropoff": 4, "dead_end": 2}
    assert snapshot.converted == {CART: 1}
    assert snapshot.active == {CART: 10 - 1 - 3 - 1}
    assert snapshot.watermark_lag == 2.25
    assert snapshot.causes() == {
        "unfamiliar": 0,
        "not_understood": 0,
        "indifferent": 3,
        "distrust": 1,
        "distracted": 0,
    }


def test_funnel_lists_every_step_in_order_with_its_cause(demo: JourneySet) -> None:
    rows = funnel(parse_metrics(metrics_text()), demo)
    assert [row for row in rows if row.journey == CART] == [
        FunnelRow(CART, "cart", 10, 0, None),
        FunnelRow(CART, "checkout", 6, 3, "indifferent"),
        FunnelRow(CART, "purchase", 1, 1, "distrust"),
    ]
    assert len(rows) == sum(len(journey.steps) for journey in demo.journeys)
    assert all(row.reached == 0 for row in rows if row.journey != CART)


def test_trigger_row_from_a_published_trigger() -> None:
    trigger = Trigger(
        trigger_id="0" * 32,
        type="dropoff",
        journey=CART,
        user_id="user-1234567890",
        last_step="cart",
        missed_step="checkout",
        cause=Cause.INDIFFERENT,
        remedy="offer, coupon, social proof",
        event_time="2024-11-22T08:01:02.345Z",
        deadline="2024-11-22T08:01:02.345Z",
        last_step_at="2024-11-22T08:00:32.345Z",
        started_by="e1",
        context=TriggerContext(),
    )
    row = trigger_row(orjson.dumps(trigger.model_dump(mode="json")))
    assert row == TriggerRow("dropoff", CART, "checkout", "indifferent", "user-123", "08:01:02")
    dead_end = trigger_row(
        b'{"type":"dead_end","journey":null,"missed_step":null,"cause":"dead_end",'
        b'"user_id":"u7-0001","event_time":"not a time"}'
    )
    assert dead_end == TriggerRow("dead_end", "-", "-", "dead_end", "u7-0001", "?")
    assert trigger_row(b"not json") is None
    assert trigger_row(b"[]") is None


def test_events_per_second_over_the_samples_kept() -> None:
    assert events_per_second([]) is None
    assert events_per_second([(10.0, 100.0)]) is None
    assert events_per_second([(10.0, 100.0), (12.0, 110.0), (15.0, 150.0)]) == 10.0


def test_summary_line_names_events_rate_and_triggers() -> None:
    line = summary_line(65.2, parse_metrics(metrics_text()), 3.25)
    assert line == (
        "[   65s] events 42 (3.2/s), triggers dead_end=2, dropoff=4, rejected 3, "
        "late 1, duplicate 1"
    )
    assert "(-/s)" in summary_line(0, Snapshot(), None)


def test_render_shows_the_numbers(demo: JourneySet) -> None:
    last = [TriggerRow("dead_end", "-", "-", "dead_end", "u7-0042", "08:01:02")]
    data = ViewData(75, "http://127.0.0.1:6066/metrics", parse_metrics(metrics_text()), 12.5, last)
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(render(data, demo))
    lines = [" ".join(line.split()) for line in console.export_text().splitlines()]
    assert lines[0] == "LinkWatch dev 1m15s 12.5 events/s http://127.0.0.1:6066/metrics"
    assert "cart_to_purchase cart 10 started" in lines
    assert "5 open checkout 6 3 indifferent" in lines
    assert "1 converted purchase 1 1 distrust" in lines
    text = "\n".join(lines)
    for expected in (
        "indifferent 3",
        "dropoff triggers 4",
        "dead_end triggers 2",
        "valid events 42",
        "late 1",
        "duplicate 1",
        "watermark lag 2.2 s",
        "rejected records 3",
        "invalid_json 2",
        "dead_end - - dead_end u7-0042 08:01:02",
    ):
        assert expected in text, expected
    # Fits a 80 x 40 terminal, names whole.
    assert len(lines) <= 40
    assert "…" not in text


def test_render_before_the_first_scrape(demo: JourneySet) -> None:
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(render(ViewData(0, "url", Snapshot(), None, []), demo))
    assert "- events/s" in console.export_text()


def test_run_dev_refuses_impossible_arguments_before_starting_anything() -> None:
    with pytest.raises(ValueError, match="rate_users_per_min"):
        run_dev(rate_users_per_min=0)
    with pytest.raises(ValueError, match="duration"):
        run_dev(duration=-1)
