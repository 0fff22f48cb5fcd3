"""Broken-link alerts per link and campaign (links.py), through the reference entity driver."""

from __future__ import annotations

import random
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkwatch.errors import ConfigError
from linkwatch.journeys import parse_journeys
from linkwatch.links import METRICS, LinkAlert, LinkHealth, LinkHealthRules
from linkwatch.signals import (
    ENTITY_LEVEL,
    EntityOutput,
    Measure,
    Published,
    Signal,
    signal,
)
from tests.builders import MIN, T0, at
from tests.entity_driver import Checked, drive, drive_entity, totals

RULES = LinkHealthRules()  # the documented defaults: 1h window, 5m buckets, 20 clicks, 25%, 95%
LOGIC = LinkHealth(RULES)
BUCKET = 5 * MIN
HOUR = 60 * MIN


def clicks(
    count: int,
    start: int,
    failed: int = 0,
    via_share: bool = False,
    entity: str = "link:L1",
    tag: str = "c",
) -> list[Signal]:
    """`count` clicks a second apart from `start`; the first `failed` of them dead ends."""
    return [
        signal(
            ENTITY_LEVEL,
            entity,
            "click",
            start + i * 1000,
            {"failed": i < failed, "via_share": via_share},
            f"{tag}{start}-{i}",
        )
        for i in range(count)
    ]


def dropoffs(
    count: int, start: int, entity: str = "link:L1", journey: str = "content_to_purchase"
) -> list[Signal]:
    return [
        signal(
            ENTITY_LEVEL,
            entity,
            "dropoff",
            start + i * 1000,
            {"journey": journey, "step": "product"},
            f"t{journey}{start}-{i}",
        )
        for i in range(count)
    ]


def alerts(outputs: list[EntityOutput]) -> list[LinkAlert]:
    records = [o.record for o in outputs if isinstance(o, Published)]
    assert all(isinstance(r, LinkAlert) for r in records)
    return [r for r in records if isinstance(r, LinkAlert)]


def test_a_link_breaks_once_when_a_quarter_of_its_clicks_dead_end() -> None:
    # 20 clicks in the first bucket, 5 of them failed landings reached through a share.
    signals = clicks(5, at(0), failed=5, via_share=True) + clicks(15, at(1))
    state, outputs = drive_entity(LOGIC, "link:L1", signals, until=at(50))
    [alert] = alerts(outputs)  # still broken at every close up to 50 min: no repeat
    assert (alert.status, alert.reasons) == ("broken", ("dead_end_rate",))
    assert (alert.entity_kind, alert.entity_id) == ("link", "L1")
    assert (alert.clicks, alert.dead_ends, alert.share_clicks) == (20, 5, 5)
    assert (alert.dead_end_rate, alert.dropoff_rate) == (0.25, 0.0)
    # Judged when the first bucket closed, over the hour before.
    assert alert.window_end == alert.event_time == "2024-11-22T00:05:00.000Z"
    assert alert.window_start == "2024-11-21T23:05:00.000Z"
    assert alert.broken_since is None
    assert state is not None
    assert [o.key for o in outputs if isinstance(o, Published)] == ["link:L1"]


@pytest.mark.parametrize(
    ("total", "failed"),
    [(19, 19), (20, 4)],  # too few clicks to judge; a failure rate just under 25%
)
def test_no_alert_without_enough_clicks_or_failures(total: int, failed: int) -> None:
    _, outputs = drive_entity(LOGIC, "link:L1", clicks(total, at(0), failed), until=at(120))
    assert alerts(outputs) == []


def test_drop_offs_right_after_clicks_break_a_link() -> None:
    # 20 healthy landings, 19 of the users stop right there (drop-offs at their deadlines).
    signals = clicks(20, at(0)) + dropoffs(19, at(30))
    _, outputs = drive_entity(LOGIC, "link:L1", signals, until=at(40))
    [alert] = alerts(outputs)
    assert (alert.reasons, alert.dropoffs, alert.dropoff_rate) == (("dropoff_rate",), 19, 0.95)
    assert alert.dropoff_journey == "content_to_purchase"
    assert alert.window_end == "2024-11-22T00:35:00.000Z"  # the close after the 19th drop-off


def test_journeys_ended_by_the_same_clicks_are_not_added_up() -> None:
    """A cart click can end both the content and the cart journey: one visitor, not two."""
    signals = clicks(20, at(0)) + dropoffs(12, at(30)) + dropoffs(12, at(30), journey="cart")
    assert alerts(drive_entity(LOGIC, "link:L1", signals, until=at(90))[1]) == []
    signals += dropoffs(7, at(31), journey="cart")
    [alert] = alerts(drive_entity(LOGIC, "link:L1", signals, until=at(40))[1])
    assert (alert.dropoff_journey, alert.dropoffs) == ("cart", 19)


def test_both_reasons_are_reported_together() -> None:
    signals = clicks(20, at(0), failed=10) + dropoffs(20, at(2))
    [alert] = alerts(drive_entity(LOGIC, "link:L1", signals, until=at(5))[1])
    assert alert.reasons == ("dead_end_rate", "dropoff_rate")


def test_recovers_when_the_failures_leave_the_window_then_breaks_again() -> None:
    signals = (
        clicks(20, at(0), failed=10)  # broken at 00:05
        + clicks(20, at(10))  # 10 of 40 failed: 25%, still broken
        + clicks(20, at(120), failed=20, tag="again")  # broken again at 02:05
    )
    state, outputs = drive_entity(LOGIC, "link:L1", signals, until=at(125))
    broken, recovered, again = alerts(outputs)
    assert (broken.status, broken.window_end) == ("broken", "2024-11-22T00:05:00.000Z")
    # The failing bucket leaves the window at 01:05: 20 clicks, none failed.
    assert (recovered.status, recovered.window_end) == ("recovered", "2024-11-22T01:05:00.000Z")
    assert (recovered.clicks, recovered.dead_ends, recovered.reasons) == (20, 0, ())
    assert recovered.broken_since == broken.window_end
    assert (again.status, again.window_end) == ("broken", "2024-11-22T02:05:00.000Z")
    assert len({broken.alert_id, recovered.alert_id, again.alert_id}) == 3
    assert totals(outputs)["links_broken", ("link",)] == 1
    assert totals(outputs)["link_alerts_total", ("link", "broken")] == 2
    assert state is not None


def test_a_link_without_clicks_for_a_whole_window_recovers_and_is_forgotten() -> None:
    state, outputs = drive_entity(LOGIC, "link:L1", clicks(20, at(0), failed=20), until=at(600))
    broken, recovered = alerts(outputs)
    assert (broken.status, recovered.status) == ("broken", "recovered")
    assert recovered.window_end == "2024-11-22T01:05:00.000Z"
    assert (recovered.clicks, recovered.dead_end_rate) == (0, 0.0)
    assert state is None
    assert totals(outputs)["links_broken", ("link",)] == 0


def test_a_few_healthy_clicks_close_the_alert() -> None:
    """Fewer than min_clicks cannot break a link, but they show it works again."""
    signals = clicks(20, at(0), failed=20) + clicks(3, at(61))
    _, outputs = drive_entity(LOGIC, "link:L1", signals, until=at(70))
    _, recovered = alerts(outputs)
    assert (recovered.window_end, recovered.clicks) == ("2024-11-22T01:05:00.000Z", 3)


def test_campaigns_are_judged_like_links_under_their_own_kind() -> None:
    signals = clicks(20, at(0), failed=20, entity="campaign:C9") + clicks(20, at(0), failed=20)
    results = drive(LOGIC, signals, until=at(5))
    [campaign] = alerts(results["campaign:C9"][1])
    [link] = alerts(results["link:L1"][1])
    assert (campaign.entity_kind, campaign.entity_id) == ("campaign", "C9")
    assert campaign.alert_id != link.alert_id
    assert totals(results["campaign:C9"][1]) == {
        ("link_clicks_total", ("campaign",)): 20,
        ("link_dead_ends_total", ("campaign",)): 20,
        ("link_alerts_total", ("campaign", "broken")): 1,
        ("links_broken", ("campaign",)): 1,
    }


def test_state_holds_only_the_window() -> None:
    steady = [s for hour in range(6) for s in clicks(30, at(hour * 60), failed=1, tag=f"h{hour}")]
    steady += [s for m in range(0, 360, 5) for s in clicks(1, at(m), tag=f"m{m}")]
    state, _ = drive_entity(LOGIC, "link:L1", steady, until=at(359))
    assert state is not None
    assert len(state.buckets) <= 60 // 5


def test_every_measure_is_declared_with_bounded_labels() -> None:
    signals = clicks(20, at(0), failed=20, entity="link:secret-link-id") + dropoffs(
        3, at(1), entity="link:secret-link-id"
    )
    _, outputs = drive_entity(LOGIC, "link:secret-link-id", signals, until=at(200))
    declared = {m.name: m for m in METRICS}
    measures = [o for o in outputs if isinstance(o, Measure)]
    assert {m.name for m in measures} == set(declared)
    for m in measures:
        assert len(m.labels) == len(declared[m.name].labels)
        assert "secret-link-id" not in m.labels
        assert m.name.endswith("_total") == (declared[m.name].type == "counter")


def test_links_section_of_the_journeys_file() -> None:
    journey = '[[journey]]\nname = "j"\nstep = [{ name = "a", match = { kind = "click" } },'
    journey += ' { name = "b", match = { kind = "purchase" }, within = "1h", cause = "distrust" }]'
    rules = parse_journeys(
        '[links]\nwindow = "2h"\nbucket = "10m"\nmin_clicks = 50\ndead_end_rate = 0.1\n'
        "dropoff_rate = 0.8\n" + journey
    ).links
    assert rules == LinkHealthRules(True, 2 * HOUR, 10 * MIN, 50, 0.1, 0.8)
    assert parse_journeys(journey).links == LinkHealthRules(True, HOUR, BUCKET, 20, 0.25, 0.95)
    for bad in ('window = "1h"\nbucket = "7m"', 'bucket = "soon"', "dead_end_rate = 1.5", "x = 1"):
        with pytest.raises(ConfigError):
            parse_journeys(f"[links]\n{bad}\n{journey}")


# -- properties -------------------------------------------------------------------------------


link_signals = st.lists(
    st.tuples(
        st.sampled_from(["link:L1", "campaign:C1"]),
        st.sampled_from(["ok", "failed", "share_failed", "dropoff:a", "dropoff:b"]),
        st.integers(0, 3 * HOUR),
    ),
    max_size=120,
)
SMALL = LinkHealthRules(window_ms=30 * MIN, bucket_ms=BUCKET, min_clicks=4)


def build(raw: list[tuple[str, str, int]]) -> list[Signal]:
    out: list[Signal] = []
    for n, (entity, what, offset) in enumerate(raw):
        if what.startswith("dropoff:"):
            data = {"journey": what[len("dropoff:") :], "step": "s"}
            out.append(signal(ENTITY_LEVEL, entity, "dropoff", T0 + offset, data, f"t{n}"))
        else:
            data = {"failed": what != "ok", "via_share": what == "share_failed"}
            out.append(signal(ENTITY_LEVEL, entity, "click", T0 + offset, data, f"e{n}"))
    return out


@settings(max_examples=60, deadline=None)
@given(link_signals, st.randoms(use_true_random=False))
def test_outputs_do_not_depend_on_order_or_duplicates(
    raw: list[tuple[str, str, int]], rnd: random.Random
) -> None:
    signals = build(raw)
    shuffled = signals + rnd.sample(signals, len(signals) // 2)
    rnd.shuffle(shuffled)
    logic = Checked(LinkHealth(SMALL))
    until = T0 + 5 * HOUR
    assert drive(logic, shuffled, until) == drive(logic, signals, until)


@settings(max_examples=60, deadline=None)
@given(link_signals)
def test_alerts_match_a_brute_force_evaluation_of_every_window(
    raw: list[tuple[str, str, int]],
) -> None:
    """An oracle that recounts every window from the raw signals at every bucket close."""
    signals = build(raw)
    until = T0 + 5 * HOUR
    results = drive(Checked(LinkHealth(SMALL)), signals, until)
    for entity, (_, outputs) in results.items():
        mine = [s for s in signals if s.entity == entity]
        expected = []
        broken = False
        for close in range(T0 + BUCKET, until + 1, BUCKET):
            window = [s for s in mine if close - SMALL.window_ms <= s.ts < close]
            n = sum(s.kind == "click" for s in window)
            failed = sum(s.kind == "click" and s.data["failed"] for s in window)
            lost = max(
                sum(s.kind == "dropoff" and s.data["journey"] == j for s in window) for j in "ab"
            )
            over = n > 0 and (failed / n >= 0.25 or lost / n >= 0.95)
            if not broken and over and n >= SMALL.min_clicks:
                expected.append(("broken", close, n, failed, lost))
                broken = True
            elif broken and not over:
                expected.append(("recovered", close, n, failed, lost))
                broken = False
        got = [
            (a.status, close_of(a.window_end), a.clicks, a.dead_ends, a.dropoffs)
            for a in alerts(outputs)
        ]
        assert got == expected


def close_of(rfc3339: str) -> int:
    return int(datetime.fromisoformat(rfc3339).timestamp() * 1000)
