"""The synthetic traffic generator: valid where it means to be, broken where it means to be,
reproducible, and walking every journey to every outcome."""

from __future__ import annotations

import gzip
import re
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from linkwatch.codec import decode_event
from linkwatch.engine import JourneyEngine, Transition
from linkwatch.errors import RecordRejected, RejectReason
from linkwatch.events import (
    CHANNELS,
    ClickEvent,
    Event,
    GroupChatEvent,
    PurchaseEvent,
    ShareEvent,
    is_dead_end,
)
from linkwatch.journeys import load_journeys
from linkwatch.partition import PartitionProcessor
from linkwatch.simulate import generate, write_jsonl
from linkwatch.triggers import DROPOFF_CAUSES, Trigger

T0 = 1_732_233_600_000  # 2024-11-22T00:00:00Z


def split(records: list[bytes]) -> tuple[list[tuple[bytes, Event]], list[RecordRejected]]:
    """(raw, event) for every record that decodes; the rejection for every one that does not."""
    good: list[tuple[bytes, Event]] = []
    bad: list[RecordRejected] = []
    for raw in records:
        try:
            good.append((raw, decode_event(raw)))
        except RecordRejected as rejection:
            bad.append(rejection)
    return good, bad


@pytest.fixture(scope="module")
def traffic() -> list[bytes]:
    return list(generate(start_ms=T0))


@pytest.fixture(scope="module")
def events(traffic: list[bytes]) -> list[Event]:
    return [event for _, event in split(traffic)[0]]


def test_same_arguments_give_identical_bytes() -> None:
    first = list(generate(seed=3, users=120, start_ms=T0))
    assert list(generate(seed=3, users=120, start_ms=T0)) == first
    assert list(generate(seed=4, users=120, start_ms=T0)) != first


def test_every_record_is_one_non_empty_json_line(traffic: list[bytes]) -> None:
    assert traffic
    assert all(raw.strip() for raw in traffic)
    assert not [raw for raw in traffic if b"\n" in raw or b"\r" in raw]


def test_bad_records_are_exactly_the_extra_records_and_all_are_rejected(
    traffic: list[bytes],
) -> None:
    clean = list(generate(start_ms=T0, bad_ratio=0))
    good, bad = split(traffic)
    # Only bad records are added: the ones that decode are the clean run, in the same order.
    assert [raw for raw, _ in good] == clean
    assert len(bad) == len(traffic) - len(clean) == round(len(clean) * 0.01 / 0.99)
    assert {rejection.reason for rejection in bad} >= {
        RejectReason.INVALID_JSON,
        RejectReason.INVALID_UTF8,
        RejectReason.NOT_AN_OBJECT,
        RejectReason.UNKNOWN_KIND,
        RejectReason.MISSING_FIELD,
        RejectReason.WRONG_TYPE,
        RejectReason.INVALID_VALUE,
        RejectReason.NEGATIVE_AMOUNT,
    }


def test_a_higher_bad_ratio_covers_every_corruption() -> None:
    records = list(generate(users=100, start_ms=T0, bad_ratio=0.2))
    _, bad = split(records)
    assert len(bad) == pytest.approx(0.2 * len(records), abs=1)
    assert len({rejection.reason for rejection in bad}) >= 8


def test_event_ids_are_unique_except_exact_re_sends(traffic: list[bytes]) -> None:
    good, _ = split(traffic)
    copies: dict[str, set[bytes]] = {}
    for raw, event in good:
        copies.setdefault(event.event_id, set()).add(raw)
    assert all(len(raws) == 1 for raws in copies.values()), "same event_id, different bytes"
    resent = len(good) - len(copies)
    assert 0.001 * len(good) <= resent <= 0.015 * len(good)


def disorder(events: list[Event]) -> tuple[int, int]:
    """(how far behind the newest event time an event came at worst, how many came behind)."""
    newest = events[0].ts
    worst = behind = 0
    for event in events:
        worst = max(worst, newest - event.ts)
        behind += event.ts < newest
        newest = max(newest, event.ts)
    return worst, behind


@pytest.mark.parametrize("disorder_ms", [0, 500, 5000])
def test_disorder_stays_within_disorder_ms(disorder_ms: int) -> None:
    good, _ = split(list(generate(users=200, start_ms=T0, disorder_ms=disorder_ms)))
    worst, _ = disorder([event for _, event in good])
    assert worst <= disorder_ms


def test_default_traffic_arrives_slightly_out_of_order(events: list[Event]) -> None:
    worst, behind = disorder(events)
    assert 0 < worst <= 2000
    assert behind >= 10


def test_all_users_take_part_from_start_ms_on(events: list[Event]) -> None:
    assert {event.user_id for event in events} == {f"u{n:04d}" for n in range(1, 501)}
    assert min(event.ts for event in events) >= T0


def test_traffic_covers_every_kind_channel_page_and_group_action(
    traffic: list[bytes], events: list[Event]
) -> None:
    assert Counter(event.kind for event in events).keys() == {
        "click",
        "share",
        "purchase",
        "group_chat",
    }
    assert {event.channel for event in events} == set(CHANNELS)
    pages = {event.page for event in events if isinstance(event, ClickEvent)}
    assert pages >= {"content", "landing", "product", "detail", "search", "cart", "checkout"}
    actions = {event.action for event in events if isinstance(event, GroupChatEvent)}
    assert actions == {"join", "leave", "message", "mention", "red_packet", "link_share"}
    assert len({event.campaign_id for event in events} - {None}) >= 3
    # Both timestamp forms and both amount forms the contract allows, in valid records.
    valid = [raw for raw, _ in split(traffic)[0]]
    assert any(b'"ts":"' in raw for raw in valid)
    assert any(b'"amount":"' in raw for raw in valid)
    assert any(re.search(rb'"amount":\d', raw) for raw in valid)


def test_purchases_are_priced_in_cny(events: list[Event]) -> None:
    purchases = [event for event in events if isinstance(event, PurchaseEvent)]
    assert len(purchases) >= 50
    assert {purchase.currency for purchase in purchases} == {"CNY"}
    assert all(purchase.amount > 0 for purchase in purchases)


def test_dead_ends_are_one_to_two_percent_of_clicks(events: list[Event]) -> None:
    clicks = [event for event in events if isinstance(event, ClickEvent)]
    dead_ends = [click for click in clicks if is_dead_end(click)]
    assert len({click.link_id for click in dead_ends}) >= 5
    assert 0.005 <= len(dead_ends) / len(clicks) <= 0.03


def test_shares_are_clicked_through_and_bought(events: list[Event]) -> None:
    shares = {event.share_id: event for event in events if isinstance(event, ShareEvent)}
    assert {share.target for share in shares.values()} >= {"group_chat", "moments", "direct"}
    assert all(
        (share.group_id is not None) is (share.target == "group_chat") for share in shares.values()
    )
    referred = [
        event
        for event in events
        if isinstance(event, ClickEvent | PurchaseEvent) and event.ref_share_id is not None
    ]
    for event in referred:
        assert event.ref_share_id in shares, f"{event.event_id} names an unknown share"
        assert shares[event.ref_share_id].ts <= event.ts
    clicked = [event for event in referred if isinstance(event, ClickEvent)]
    assert len({click.ref_share_id for click in clicked}) >= 20
    assert {click.channel for click in clicked} >= {"group_chat", "moments"}
    assert sum(isinstance(event, PurchaseEvent) for event in referred) >= 10


def test_group_members_click_links_and_some_leave(events: list[Event]) -> None:
    group_clicks = [e for e in events if isinstance(e, ClickEvent) and e.channel == "group_chat"]
    assert len({click.user_id for click in group_clicks}) >= 30
    groups = Counter(e.group_id for e in events if isinstance(e, GroupChatEvent))
    assert 3 <= len(groups) <= 10
    leavers = {e.user_id for e in events if isinstance(e, GroupChatEvent) and e.action == "leave"}
    assert len(leavers) >= 5


def test_the_engine_sees_every_step_dropped_and_every_journey_converted(
    events: list[Event],
) -> None:
    journeys = load_journeys()
    processor = PartitionProcessor(JourneyEngine(journeys))
    outputs = [output for event in events for output in processor.process(event).outputs]
    outputs += processor.flush(close_open=True)
    transitions = [output for output in outputs if isinstance(output, Transition)]
    dropped = {(t.journey, t.step) for t in transitions if t.outcome == "dropped_off"}
    for journey in journeys.journeys:
        for step in journey.steps[1:]:
            assert (journey.name, step.name) in dropped
    assert {t.journey for t in transitions if t.outcome == "converted"} == {
        journey.name for journey in journeys.journeys
    }
    triggers = [output for output in outputs if isinstance(output, Trigger)]
    assert {trigger.cause for trigger in triggers} >= set(DROPOFF_CAUSES)
    # Late returns: users who reach the missed step after all, once its budget has run out.
    by_user: dict[str, list[Event]] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    late_returns: Counter[tuple[str, str | None]] = Counter()
    for trigger in triggers:
        if trigger.journey is None or trigger.deadline is None:
            continue
        missed = next(
            s for s in journeys.by_name(trigger.journey).steps if s.name == trigger.missed_step
        )
        deadline = datetime.fromisoformat(trigger.deadline).timestamp() * 1000
        if any(e.ts > deadline and missed.matcher.matches(e) for e in by_user[trigger.user_id]):
            late_returns[trigger.journey, trigger.missed_step] += 1
    assert len(late_returns) >= 6
    assert late_returns.total() >= 40


def test_write_jsonl_plain_and_gzip_round_trip_reproducibly(tmp_path: Path) -> None:
    records = list(generate(users=30, start_ms=T0))
    plain = tmp_path / "traffic.jsonl"
    assert write_jsonl(plain, records) == len(records)
    assert plain.read_bytes().splitlines() == records
    packed = [tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"]
    for path in packed:
        assert write_jsonl(path, iter(records)) == len(records)
    assert packed[0].read_bytes() == packed[1].read_bytes()
    assert gzip.decompress(packed[0].read_bytes()) == plain.read_bytes()


def test_write_jsonl_refuses_a_record_that_would_break_the_lines(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="record 2 contains a newline"):
        write_jsonl(tmp_path / "x.jsonl", [b"{}", b'{"a":\n1}'])


@pytest.mark.parametrize(
    ("users", "bad_ratio", "disorder_ms", "start_ms", "complaint"),
    [
        (-1, 0.01, 2000, T0, "users"),
        (500, 1.0, 2000, T0, "bad_ratio"),
        (500, -0.1, 2000, T0, "bad_ratio"),
        (500, 0.01, -1, T0, "disorder_ms"),
        (500, 0.01, 2000, T0 // 1000, "start_ms"),  # seconds, not milliseconds
    ],
)
def test_generate_refuses_impossible_arguments_at_once(
    users: int, bad_ratio: float, disorder_ms: int, start_ms: int, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        generate(users=users, bad_ratio=bad_ratio, disorder_ms=disorder_ms, start_ms=start_ms)
