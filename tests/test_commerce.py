"""Sound, traffic and sales: counted once per event, per channel, with exact decimal revenue."""

from __future__ import annotations

from decimal import Decimal

from linkwatch.codec import decode_event
from linkwatch.commerce import CampaignLabels, Commerce, space_of
from linkwatch.journeys import JourneySet
from linkwatch.replay import replay_lines
from tests.builders import at, raw


def test_each_kind_counts_as_its_measure_on_its_channel() -> None:
    commerce = Commerce()
    for record in [
        raw("share", channel="moments"),
        raw("click", channel="moments"),
        raw("click", channel="moments"),
        raw("purchase", channel="moments", amount="19.90"),
        raw("purchase", channel="moments", amount=0.1),
        raw("group_chat", channel="group_chat"),
    ]:
        commerce.count(decode_event(record))
    moments = commerce.channels["moments"]
    assert (moments.shares, moments.clicks, moments.purchases) == (1, 2, 2)
    assert moments.revenue == {"CNY": Decimal("20.00")}  # exact: no float drift
    assert moments.conversion == 1.0
    assert commerce.channels["group_chat"].clicks == 0


def test_private_domain_share_of_revenue() -> None:
    commerce = Commerce()
    for channel, amount in [
        ("group_chat", "20"),
        ("mini_program", "5"),
        ("web", "60"),
        ("offline_store", "15"),
    ]:
        commerce.count(decode_event(raw("purchase", channel=channel, amount=amount)))
    assert commerce.private_share("CNY") == 0.25
    assert commerce.private_share("USD") is None
    assert [space_of(c) for c in ("group_chat", "web", "offline_store")] == [
        "private",
        "public",
        "offline",
    ]


def test_campaign_labels_are_bounded() -> None:
    labels = CampaignLabels(limit=2)
    assert [labels.label(c) for c in ["a", "b", "c", "a", None]] == ["a", "b", "other", "a", "none"]


def test_replay_counts_late_events_but_not_duplicates(cart_journeys: JourneySet) -> None:
    purchase = raw("purchase", event_id="p1", ts=at(0), amount="10")
    lines = [
        purchase,
        purchase,  # a duplicate: not a second sale
        raw("click", event_id="c1", ts=at(5), page="other"),
        raw("purchase", event_id="p2", ts=at(1), amount="5"),  # late: still a sale
    ]
    result = replay_lines(lines, cart_journeys)
    web = result.report.commerce.channels["web"]
    assert result.report.duplicate == 1
    assert result.report.late == 1
    assert (web.purchases, web.clicks, web.revenue) == (2, 1, {"CNY": Decimal("15")})
    report = result.report.to_dict()["commerce"]
    assert report["channels"]["web"]["revenue"] == {"CNY": "15"}
    assert "sound / traffic / sales by channel" in result.report.render()
