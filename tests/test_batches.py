"""Batch records: one Kafka record carrying many events of one user, as a JSON array or as
NDJSON (README, "Batch records"). How a record's format is told (content-type header, else its
first byte), the bounds on a batch, and each event checked on its own with its position."""

from __future__ import annotations

from collections import Counter
from functools import cache
from typing import Any

import orjson
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from linkwatch.codec import (
    Batch,
    BatchLimits,
    Headers,
    content_type_of,
    decode_event,
    decode_message,
    decode_record,
)
from linkwatch.engine import JourneyEngine
from linkwatch.errors import RecordRejected, RejectReason
from linkwatch.events import MAX_RECORD_BYTES, Event
from linkwatch.journeys import load_journeys
from linkwatch.partition import PartitionProcessor
from linkwatch.produce import route
from linkwatch.replay import replay_lines
from linkwatch.settings import Settings
from linkwatch.simulate import generate
from linkwatch.triggers import Resolution, TopicRecord, Trigger
from tests.builders import T0, raw

NDJSON = [("content-type", b"application/x-ndjson")]
JSON = [("content-type", b"application/json")]


def decode(
    value: bytes | None,
    headers: Headers | None = None,
    *,
    key: bytes | None = b"u1",
    topic_kind: str | None = "click",
    limits: BatchLimits = BatchLimits(),  # noqa: B008
) -> Event | Batch:
    return decode_message(
        value, headers=headers, topic_kind=topic_kind, key=key, topic="events.click", limits=limits
    )


def batch_of(value: bytes, headers: Headers | None = None, **kwargs: Any) -> Batch:
    decoded = decode(value, headers, **kwargs)
    assert isinstance(decoded, Batch), decoded
    return decoded


def rejected(value: bytes | None, headers: Headers | None = None, **kwargs: Any) -> RecordRejected:
    with pytest.raises(RecordRejected) as info:
        decode(value, headers, **kwargs)
    return info.value


def outcomes(batch: Batch) -> list[tuple[int, str]]:
    """(index, event_id or reject reason) of each item."""
    return [
        (index, item.reason.value if isinstance(item, RecordRejected) else item.event_id)
        for index, item in batch.items
    ]


def array(*events: bytes) -> bytes:
    return b"[" + b",".join(events) + b"]"


def ndjson(*lines: bytes) -> bytes:
    return b"\n".join(lines)


A, B, C = (raw(event_id=eid) for eid in ("a", "b", "c"))


# -- telling the formats apart ----------------------------------------------------------------


def test_a_single_object_needs_no_header_and_decodes_as_before() -> None:
    assert decode(A) == decode_record(A, topic_kind="click", key=b"u1")
    assert decode(b"  \n" + A + b"\n") == decode_event(A)  # whitespace around it, as before
    assert decode(A, JSON) == decode_event(A)


@pytest.mark.parametrize(
    ("value", "headers", "expected"),
    [
        (array(A, B), None, "array"),
        (b" \r\n\t" + array(A, B), None, "array"),  # sniffed past JSON whitespace
        (ndjson(A, B), None, "ndjson"),  # no header: the first line is an object on its own
        (array(A, B), JSON, "array"),
        (ndjson(A, B), NDJSON, "ndjson"),
        (A, NDJSON, "ndjson"),  # NDJSON of one line is a batch of one
        (ndjson(A, B), [("Content-Type", b"application/x-ndjson; charset=UTF-8")], "ndjson"),
        (ndjson(A, B), [("content-type", b"application/jsonl")], "ndjson"),
        (ndjson(A, B), {"content-type": b"application/ndjson"}, "ndjson"),  # a mapping too
        (ndjson(A, B), [(b"CONTENT-TYPE", b"application/x-jsonlines")], "ndjson"),
        (array(A, B), [("content-type", b' Application/JSON ;charset="utf-8"')], "array"),
        (ndjson(A, B), [("trace-id", b"x"), ("content-type", b"application/x-ndjson")], "ndjson"),
    ],
)
def test_the_header_says_which_format_else_the_first_byte_does(
    value: bytes, headers: Headers | None, expected: str
) -> None:
    batch = batch_of(value, headers)
    assert batch.format == expected
    assert [event.event_id for _, event in batch.items] == ["a", "b"][: len(batch.items)]


def test_the_last_content_type_header_counts() -> None:
    headers = [("content-type", b"text/plain"), ("content-type", b"application/x-ndjson")]
    assert content_type_of(headers) == "application/x-ndjson"
    assert content_type_of([("content-length", b"1")]) is None


def test_a_content_type_header_without_a_value_is_not_one_the_worker_reads() -> None:
    headers = [("content-type", None)]  # Kafka allows a header with a null value
    assert rejected(A, headers).reason is RejectReason.UNSUPPORTED_CONTENT_TYPE


@pytest.mark.parametrize(
    "content_type",
    [
        b"text/plain",
        b"application/avro",
        b"application/json-seq",
        b"application/json; charset=latin1",
        b"application/x-ndjson; charset=utf-16",
        b"",
        "application/jsön".encode(),
    ],
)
def test_a_content_type_the_worker_cannot_read_rejects_the_whole_record(
    content_type: bytes,
) -> None:
    error = rejected(array(A, B), [("content-type", content_type)])
    assert error.reason is RejectReason.UNSUPPORTED_CONTENT_TYPE
    assert "application/x-ndjson" in error.message  # says what would do


def test_json_by_header_is_one_document_so_two_lines_are_invalid_json() -> None:
    assert rejected(ndjson(A, B), JSON).reason is RejectReason.INVALID_JSON


def test_without_a_header_a_malformed_single_record_keeps_its_one_rejection() -> None:
    pretty = orjson.dumps(orjson.loads(A), option=orjson.OPT_INDENT_2)
    assert decode(pretty) == decode_event(A)  # valid over several lines: one event
    # Broken over several lines, its first line no object of its own: one rejection, as before.
    assert rejected(pretty[:-3]).reason is RejectReason.INVALID_JSON
    assert rejected(A + b" trailing").reason is RejectReason.INVALID_JSON  # not on a new line
    assert rejected(b'{"kind":"click"').reason is RejectReason.INVALID_JSON
    assert rejected(b"42\n" + A).reason is RejectReason.INVALID_JSON  # the first line no object


def test_without_a_header_a_first_line_that_is_an_object_makes_the_rest_lines_too() -> None:
    batch = batch_of(A + b"\n}garbage\n" + B)
    assert outcomes(batch) == [(0, "a"), (1, "invalid_json"), (2, "b")]


def test_a_tombstone_or_nothing_is_empty_whatever_the_header() -> None:
    for headers in (None, JSON, NDJSON):
        assert rejected(None, headers).reason is RejectReason.EMPTY
        assert rejected(b"", headers).reason is RejectReason.EMPTY
        assert rejected(b" \r\n ", headers).reason is RejectReason.EMPTY


# -- batches of nothing, of one, of many ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "headers"),
    [(b"[]", None), (b" [ \n ] ", None), (b"[]", JSON), (b"\n\n \r\n\x0b\n", NDJSON)],
)
def test_an_empty_batch_is_rejected_as_empty(value: bytes, headers: Headers | None) -> None:
    error = rejected(value, headers)
    assert error.reason is RejectReason.EMPTY
    assert "no events" in error.message


@pytest.mark.parametrize(("value", "headers"), [(array(A), None), (A, NDJSON), (A + b"\n", None)])
def test_a_batch_of_one_is_that_event(value: bytes, headers: Headers | None) -> None:
    decoded = decode(value, headers)
    events = [item for _, item in decoded.items] if isinstance(decoded, Batch) else [decoded]
    assert events == [decode_event(A)]


@pytest.mark.parametrize("form", ["array", "ndjson"])
@pytest.mark.parametrize("bad_at", [(0,), (1,), (3,), (0, 3), (0, 1, 2, 3)])
def test_bad_events_are_rejected_alone_at_their_position(form: str, bad_at: tuple[int]) -> None:
    bad = [
        raw(event_id="x0", page="nowhere"),  # invalid_value
        raw(event_id="x1", ts="yesterday"),  # invalid_value
        raw(event_id="x2", url=None),  # missing_field
        raw("purchase", event_id="x3"),  # a purchase on the click topic
    ]
    reasons = ["invalid_value", "invalid_value", "missing_field", "topic_mismatch"]
    events = [bad[i] if i in bad_at else raw(event_id=f"e{i}") for i in range(4)]
    value = array(*events) if form == "array" else ndjson(*events)
    batch = batch_of(value)
    assert outcomes(batch) == [
        (i, reasons[i] if i in bad_at else f"e{i}") for i in range(len(events))
    ]
    for index in bad_at:  # what a dead letter keeps: the event's own bytes
        assert batch.raw_of(index) == events[index]


def test_each_event_is_checked_exactly_as_a_record_of_its_own() -> None:
    lines = [
        A,
        b"[1]",
        b'"a string"',
        b"{not json",
        raw(user_id="u2"),
        raw("share", event_id="s"),
        b'{"kind":"click","event_id":"x","user_id":"u1","ts":NaN}',
        raw(event_id="x", props={f"k{i}": i for i in range(33)}),
        A.replace(b'"a"', b'"a\xff"'),  # not UTF-8
    ]
    batch = batch_of(ndjson(*lines), NDJSON)
    for (index, item), line in zip(batch.items, lines, strict=True):
        try:
            alone: object = decode_record(line, topic_kind="click", key=b"u1", topic="t")
        except RecordRejected as rejection:
            alone = rejection.reason
        assert (item.reason if isinstance(item, RecordRejected) else item) == alone, index


def test_an_event_of_another_user_is_a_key_mismatch_that_says_why() -> None:
    batch = batch_of(array(A, raw(event_id="b", user_id="u2"), C))
    assert outcomes(batch) == [(0, "a"), (1, "key_mismatch"), (2, "c")]
    rejection = batch.items[1][1]
    assert isinstance(rejection, RecordRejected)
    assert "keyed by" in rejection.message
    # A file has no key or topic: nothing to check there.
    offline = batch_of(array(A, raw(event_id="b", user_id="u2")), key=None, topic_kind=None)
    assert outcomes(offline) == [(0, "a"), (1, "b")]


def test_blank_lines_are_skipped_but_counted_and_line_ends_may_be_crlf() -> None:
    value = b"\r\n" + A + b"\r\n\r\n  \n" + B + b"\r\n" + b"{bad\r\n"
    batch = batch_of(value, NDJSON)
    assert outcomes(batch) == [(1, "a"), (4, "b"), (5, "invalid_json")]
    assert batch.raw_of(5) == b"{bad"  # line 6, without its CR


def test_a_trailing_newline_ends_the_last_line() -> None:
    assert outcomes(batch_of(ndjson(A, B) + b"\n")) == [(0, "a"), (1, "b")]
    assert outcomes(batch_of(ndjson(A, B) + b"\n", NDJSON)) == [(0, "a"), (1, "b")]


def test_invalid_utf8_costs_its_line_in_ndjson_and_the_whole_array() -> None:
    broken = raw(event_id="b").replace(b'"b"', b'"b\xff"')
    for headers in (None, NDJSON):  # without a header, sniffed from the first line
        batch = batch_of(ndjson(A, broken, C), headers)
        assert outcomes(batch) == [(0, "a"), (1, "invalid_utf8"), (2, "c")]
        assert batch.raw_of(1) == broken
    # An array is one JSON document: no element can be told apart from the next.
    assert rejected(array(A, broken, C)).reason is RejectReason.INVALID_UTF8
    assert rejected(array(A, B)[:-1]).reason is RejectReason.INVALID_JSON


# -- bounds -----------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [None, NDJSON])
def test_a_batch_over_the_byte_limit_is_rejected_whole_before_parsing(
    headers: Headers | None,
) -> None:
    value = array(A, B, C) if headers is None else ndjson(A, B, C)
    fits = BatchLimits(max_bytes=len(value))
    assert len(batch_of(value, headers, limits=fits).items) == 3
    error = rejected(value, headers, limits=BatchLimits(max_bytes=len(value) - 1))
    assert error.reason is RejectReason.TOO_LARGE
    assert f"batch record is {len(value)} bytes" in error.message


def test_a_batch_over_the_event_limit_is_rejected_whole() -> None:
    limits = BatchLimits(max_events=3)
    assert len(batch_of(array(A, B, C), limits=limits).items) == 3
    assert len(batch_of(ndjson(A, b"", B, b" ", C), NDJSON, limits=limits).items) == 3
    for value, headers in ((array(A, B, C, A), None), (ndjson(A, B, C, A), NDJSON)):
        error = rejected(value, headers, limits=limits)
        assert error.reason is RejectReason.TOO_MANY_EVENTS
        assert "4 events" in error.message


def test_each_event_of_a_batch_keeps_the_record_size_limit() -> None:
    big = raw(event_id="big", pad="x" * MAX_RECORD_BYTES)  # an unknown field: ignored alone
    assert len(big) > MAX_RECORD_BYTES
    for value, headers in ((ndjson(A, big, B), NDJSON), (array(A, big, B), None)):
        batch = batch_of(value, headers)
        assert outcomes(batch) == [(0, "a"), (1, "too_large"), (2, "b")]
        assert batch.raw_of(1) == big
    # Under the limit it is an event like any other, its unknown field ignored.
    fits = raw(event_id="fits", pad="x" * (MAX_RECORD_BYTES - len(A) - 20))
    assert outcomes(batch_of(array(A, fits, B))) == [(0, "a"), (1, "fits"), (2, "b")]


def test_a_large_record_without_a_header_is_ndjson_only_if_its_first_line_says_so() -> None:
    lines = [raw(event_id=f"e{i}", pad="x" * 10_000) for i in range(8)]
    assert len(ndjson(*lines)) > MAX_RECORD_BYTES
    assert len(batch_of(ndjson(*lines)).items) == 8
    one = raw(event_id="big", pad="x" * MAX_RECORD_BYTES)
    error = rejected(one)
    assert error.reason is RejectReason.TOO_LARGE
    assert f"the limit is {MAX_RECORD_BYTES}" in error.message  # a single record's limit


def test_an_element_nested_too_deep_to_write_again_keeps_the_whole_record() -> None:
    value = b"[" + A + b"," + b"[" * 300 + b"]" * 300 + b"]"
    batch = batch_of(value)
    assert outcomes(batch) == [(0, "a"), (1, "not_an_object")]
    assert batch.raw_of(1) == value


# -- determinism: batches are just several events -----------------------------------------------

JOURNEYS = load_journeys()
KIND_OF_TOPIC = {topic: kind for kind, topic in Settings().input_topics.items()}
FORMS = ("array", "array, json header", "ndjson", "ndjson, no header")


@cache
def traffic(window: int) -> tuple[list[bytes], list[TopicRecord], Counter[RejectReason]]:
    """Simulated traffic (with bad records), each `window` records regrouped by topic and user
    (a stable sort: one user's events stay in order) so that runs a batch can take form; and
    what replay, the oracle, makes of it as one record a line: triggers and rejections."""
    records = list(generate(users=120, seed=4, start_ms=T0, bad_ratio=0.03))
    settings = Settings()
    clumped = []
    for start in range(0, len(records), window):
        chunk = records[start : start + window]
        routes = [route(record, settings) for record in chunk]
        order = sorted(range(len(chunk)), key=lambda i: (routes[i][0], routes[i][1] or b""))
        clumped.extend(chunk[i] for i in order)
    triggers: list[TopicRecord] = []
    report = replay_lines(clumped, JOURNEYS, on_trigger=triggers.append, close_open=True).report
    return clumped, triggers, report.rejected


def encoded(events: list[bytes], form: str) -> tuple[bytes, list[tuple[str, bytes]]]:
    if form.startswith("array"):
        headers = [("content-type", b"application/json")] if "header" in form else []
        return b"[" + b",".join(events) + b"]", headers
    if form == "ndjson":
        return b"\n".join(events) + b"\n", [("content-type", b"application/x-ndjson")]
    return b"\n".join(events), []  # sniffed: its first line is an object


# No shrinking: an example is a whole stream, and shrinking one draw per batch takes minutes;
# a failure shows the batches it drew.
@settings(max_examples=30, deadline=None, phases=[Phase.explicit, Phase.generate])
@given(st.sampled_from([1, 8, 64]), st.data())
def test_batches_of_any_sizes_give_the_triggers_of_one_event_a_record(
    window: int, data: st.DataObject
) -> None:
    """Cut a stream into batch records anywhere a run of one user's events on one topic allows,
    each in any form: the worker's decoding and the engine give exactly replay's triggers (same
    ids, same order) and rejections."""
    records, expected, rejected_by_replay = traffic(window)
    settings = Settings()
    # Records as the worker would get them: (topic, key, value, headers), batched at random.
    sent: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = []
    run: list[bytes] = []

    def close_run(topic: str, key: bytes | None) -> None:
        while run:
            size = data.draw(st.integers(1, len(run)), label="batch size")
            events, run[:] = run[:size], run[size:]
            form = data.draw(st.sampled_from(FORMS if size > 1 else (*FORMS, "alone")))
            if form == "alone":  # a record of its own, as before batches
                sent.append((topic, key, events[0], []))
            else:
                sent.append((topic, key, *encoded(events, form)))

    previous: tuple[str, bytes | None] | None = None
    for record in records:
        topic, key = route(record, settings)
        if (topic, key) != previous or key is None:
            if previous is not None:
                close_run(*previous)
            previous = (topic, key)
        if key is None:  # its user unknown: it goes alone, as a producer would send it
            sent.append((topic, key, record, []))
            previous = None
        else:
            run.append(record)
    if previous is not None:
        close_run(*previous)

    processor = PartitionProcessor(JourneyEngine(JOURNEYS))
    triggers: list[TopicRecord] = []
    rejected: Counter[RejectReason] = Counter()
    for topic, key, value, headers in sent:
        try:
            decoded = decode_message(
                value, headers=headers, topic_kind=KIND_OF_TOPIC[topic], key=key
            )
        except RecordRejected as rejection:
            rejected[rejection.reason] += 1
            continue
        items = decoded.items if isinstance(decoded, Batch) else [(0, decoded)]
        for _, item in items:
            if isinstance(item, RecordRejected):
                rejected[item.reason] += 1
                continue
            try:
                outputs = processor.process(item).outputs
            except RecordRejected as rejection:
                rejected[rejection.reason] += 1
                continue
            triggers.extend(o for o in outputs if isinstance(o, Trigger | Resolution))
    triggers.extend(
        o for o in processor.flush(close_open=True) if isinstance(o, Trigger | Resolution)
    )
    assert expected  # not vacuous: the traffic has drop-offs, dead ends, resolutions
    assert triggers == expected
    assert rejected == rejected_by_replay
