"""The real-data converters: every row becomes one valid event, the counts match SOURCE.md, and
amplified copies are distinct populations living the same history."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from linkwatch.codec import decode_event
from linkwatch.datasets import amplify, rees46_events, taobao_events
from linkwatch.engine import JourneyEngine, Verdict
from linkwatch.errors import RecordRejected
from linkwatch.events import ClickEvent, Event, PurchaseEvent
from linkwatch.journeys import load_journeys
from linkwatch.partition import PartitionProcessor
from linkwatch.simulate import generate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REES46 = DATA / "rees46_2019oct_head.csv"
TAOBAO = DATA / "taobao_userbehavior_head.csv"
STRAY_TAOBAO_TS = 1_505_117_799_000  # 2017-09-11, the one record outside the data set's window


Converter = Callable[[Path], Iterator[bytes]]


def converted(path: Path, convert: Converter) -> list[bytes]:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (see shared/data/SOURCE.md)")
    return list(convert(path))


@pytest.fixture(scope="module")
def rees46() -> list[bytes]:
    return converted(REES46, rees46_events)


@pytest.fixture(scope="module")
def taobao() -> list[bytes]:
    return converted(TAOBAO, taobao_events)


def kinds_and_pages(events: list[Event]) -> Counter[str]:
    return Counter(
        f"click/{event.page}" if isinstance(event, ClickEvent) else event.kind for event in events
    )


def test_rees46_rows_become_valid_events_in_the_source_counts(rees46: list[bytes]) -> None:
    events = [decode_event(raw) for raw in rees46]
    assert len(events) == 17_434
    assert kinds_and_pages(events) == {"click/product": 17_055, "click/cart": 165, "purchase": 214}
    assert len({event.user_id for event in events}) == 4_504
    assert len({event.session_id for event in events}) == 5_066
    assert len({event.event_id for event in events}) == len(events)
    assert [event.ts for event in events] == sorted(event.ts for event in events)
    assert {event.channel for event in events} == {"web"}


def test_rees46_fields_come_from_the_row(rees46: list[bytes]) -> None:
    # 2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d7...
    first = decode_event(rees46[0])
    assert isinstance(first, ClickEvent)
    assert (first.event_id, first.user_id, first.ts) == ("rees46-2", "r541312140", 1569888000000)
    assert first.session_id == "72d76fde-8bb3-4e00-8c23-a032dfed738c"
    assert (first.page, first.url) == ("product", "https://shop.example/p/44600062")
    assert first.props == {"product_id": "44600062", "brand": "shiseido"}  # no empty category
    purchases = [event for raw in rees46 if isinstance(event := decode_event(raw), PurchaseEvent)]
    assert {purchase.currency for purchase in purchases} == {"USD"}
    assert sum(purchase.amount for purchase in purchases) > 0
    assert all(purchase.order_id.startswith("rees46-") for purchase in purchases)


def test_conversion_is_reproducible(rees46: list[bytes], taobao: list[bytes]) -> None:
    assert list(rees46_events(REES46)) == rees46
    assert list(taobao_events(TAOBAO)) == taobao


def test_taobao_rows_become_valid_events_in_the_source_counts(taobao: list[bytes]) -> None:
    events = [decode_event(raw) for raw in taobao]
    assert len(events) == 4_321
    assert kinds_and_pages(events) == {
        "click/product": 3_926,
        "click/cart": 190,
        "click/detail": 128,
        "purchase": 77,
    }
    assert len({event.user_id for event in events}) == 43
    favourites = [e for e in events if isinstance(e, ClickEvent) and e.page == "detail"]
    assert all(event.props["action"] == "fav" for event in favourites)
    purchases = [event for event in events if isinstance(event, PurchaseEvent)]
    assert all(p.amount == 0 and p.props["amount_unknown"] is True for p in purchases)
    assert {p.currency for p in purchases} == {"CNY"}


def test_taobao_is_in_time_order_but_for_the_stray_record_which_arrives_late(
    taobao: list[bytes],
) -> None:
    events = [decode_event(raw) for raw in taobao]
    sound = [event.ts for event in events if event.ts != STRAY_TAOBAO_TS]
    assert len(sound) == len(events) - 1
    assert sound == sorted(sound)
    processor = PartitionProcessor(JourneyEngine(load_journeys()))
    verdicts = Counter(processor.process(event).verdict for event in events)
    assert verdicts == {Verdict.ACCEPTED: 4_320, Verdict.LATE: 1}


def test_amplify_makes_distinct_populations_in_time_order() -> None:
    original = list(generate(users=60, start_ms=1_732_233_600_000, bad_ratio=0.05))
    copies = list(amplify(original, 3))
    assert len(copies) == 3 * len(original)
    valid = [orjson.loads(raw) for raw in copies if _decodes(raw)]
    assert len(valid) == 3 * sum(_decodes(raw) for raw in original)
    populations: dict[str, set[str]] = {}
    for record in valid:
        copy = record["user_id"].rsplit("#", 1)[1]
        populations.setdefault(copy, set()).add(record["user_id"].rsplit("#", 1)[0])
        assert record["event_id"].endswith(f"#{copy}")
        for field in ("session_id", "order_id", "share_id", "ref_share_id"):
            assert field not in record or record[field].endswith(f"#{copy}")
    assert sorted(populations) == ["0", "1", "2"]
    assert populations["0"] == populations["1"] == populations["2"]
    times = [decode_event(raw).ts for raw in copies if _decodes(raw)]
    original_times = [decode_event(raw).ts for raw in original if _decodes(raw)]
    assert times == [ts for ts in original_times for _ in range(3)]


def test_amplify_repeats_records_that_are_not_json_objects_unchanged() -> None:
    bad = [b"[1]", b"\xff{", b"{"]
    assert list(amplify(bad, 2)) == [raw for raw in bad for _ in range(2)]
    with pytest.raises(ValueError, match="copies"):
        list(amplify([b"{}"], 0))


@pytest.mark.parametrize(
    ("convert", "text", "complaint"),
    [
        (rees46_events, "event_time,event_type\n", "header"),
        (
            rees46_events,
            "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,"
            "user_session\n2019-10-01 00:00:00 UTC,remove,1,2,,,1.00,3,s\n",
            ":2: unknown event_type 'remove'",
        ),
        (
            taobao_events,
            "user_id,item_id,category_id,behavior_type,timestamp\n1,2,3,pv,soon\n",
            ":2: timestamp 'soon'",
        ),
    ],
)
def test_malformed_rows_are_reported_with_their_line(
    tmp_path: Path, convert: Converter, text: str, complaint: str
) -> None:
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=complaint):
        list(convert(path))


def _decodes(raw: bytes) -> bool:
    try:
        decode_event(raw)
    except RecordRejected:
        return False
    return True
