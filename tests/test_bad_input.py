"""Bad input never stops LinkWatch, offline (issue 6).

The hand-made corpus (tests/data/bad-records.jsonl, see tests/fuzz.py) gets exactly its expected
outcome on the live path (`decode_message` with topic, key and headers, then the partition
processor) and through `replay_lines`. Fuzzed mutations of valid records raise nothing but
rejections, each rejected one (or each rejected event of a batch record) becomes exactly one
dead letter with a reason, each accepted one is counted, on both paths. A redelivered event is
a duplicate with no second effect.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import suppress
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkwatch.codec import Batch, decode_event, decode_message
from linkwatch.deadletters import DeadLetter, FileSource, KafkaSource
from linkwatch.engine import JourneyEngine
from linkwatch.errors import RecordRejected, RejectReason
from linkwatch.events import MAX_RECORD_BYTES
from linkwatch.journeys import load_journeys
from linkwatch.partition import PartitionProcessor
from linkwatch.replay import replay_lines
from linkwatch.simulate import generate
from linkwatch.triggers import TopicRecord
from tests.fuzz import CATEGORIES, VERDICTS, Case, Sent, event_bytes, load_corpus, mutations

START = 1_732_233_600_000  # 2024-11-22T00:00:00Z
# Live, the clock judges far-future events: a minute after the corpus's event time, as if live.
CORPUS_CLOCK = START + 11 * 60_000
JOURNEYS = load_journeys()
REASONS = frozenset(reason.value for reason in RejectReason)
# Decided on a batch record's event count or on a content-type header, which the fuzzer of
# single records does not vary: the corpus and tests/test_batches.py cover them.
NOT_FUZZED = frozenset({"too_many_events", "unsupported_content_type"})
# Decided after decoding, by the partition processor.
PROCESSOR_OUTCOMES = frozenset({"future_timestamp", "accepted", "duplicate", "late"})
PROCESSED = frozenset({"accepted", "duplicate", "late"})
MAX_MESSAGE_BYTES = 1_000_000  # the worker's producer limit (Faust's producer_max_request_size)
CORPUS = load_corpus()


class LivePath:
    """What the worker's record agent does with one record (`LiveJourneys._on_record`), without
    Kafka: `decode_message` with its topic, key and headers, each event through the partition
    processor at wall-clock `now`, and a dead letter, serialised as sent, for each rejection
    (of the record, or of one event of a batch record). Any other exception the worker would
    dead-letter as `processing_error`: here it fails the test, with its traceback."""

    def __init__(self) -> None:
        self.processor = PartitionProcessor(JourneyEngine(JOURNEYS))
        self.letters: list[DeadLetter] = []
        self.offset = 0

    def feed(self, sent: Sent, now: int) -> list[str]:
        """The outcome of each event of the record, in order (one, unless it is a batch
        record): a reject reason, or the processor's verdict."""
        topic = f"events.{sent.topic_kind}"
        self.offset += 1
        try:
            decoded = decode_message(
                sent.value,
                headers=sent.headers,
                topic_kind=sent.topic_kind,
                key=sent.key,
                topic=topic,
            )
        except RecordRejected as rejection:
            return [self.reject(sent.value or b"", rejection, topic, None)]
        if not isinstance(decoded, Batch):
            return [self.process(decoded, sent.value or b"", topic, None, now)]
        outcomes = []
        for index, item in decoded.items:
            if isinstance(item, RecordRejected):
                outcomes.append(self.reject(decoded.raw_of(index), item, topic, index))
            else:
                outcomes.append(self.process(item, decoded.raw_of(index), topic, index, now))
        return outcomes

    def process(self, event: Any, raw: bytes, topic: str, index: int | None, now: int) -> str:
        try:
            return self.processor.process(event, topic, now).verdict.value
        except RecordRejected as rejection:
            return self.reject(raw, rejection, topic, index)

    def reject(self, raw: bytes, rejection: RecordRejected, topic: str, index: int | None) -> str:
        source = KafkaSource(topic=topic, partition=0, offset=self.offset, index=index)
        letter = DeadLetter.from_rejection(raw, rejection, source)
        # What the worker sends, and it must fit a Kafka message, or the send fails.
        assert len(orjson.dumps(letter.model_dump(mode="json"))) < MAX_MESSAGE_BYTES
        self.letters.append(letter)
        return rejection.reason.value


def outcome_of_decode(sent: Sent) -> str:
    """What decoding alone (`decode_message`) says of a record that is not a batch, or of a
    batch record of one event: a reject reason, or "decoded"."""
    try:
        decoded = decode_message(
            sent.value, headers=sent.headers, topic_kind=sent.topic_kind, key=sent.key
        )
    except RecordRejected as rejection:
        return rejection.reason.value
    if isinstance(decoded, Batch):
        ((_, item),) = decoded.items
        return item.reason.value if isinstance(item, RecordRejected) else "decoded"
    return "decoded"


# -- the corpus --------------------------------------------------------------------------------


def test_the_corpus_has_every_category_and_every_reason() -> None:
    assert len({case.name for case in CORPUS}) == len(CORPUS)
    malformed = [case for case in CORPUS if case.malformed]
    assert len(malformed) >= 50
    assert {case.category for case in CORPUS} == set(CATEGORIES)
    assert {case.expect for case in CORPUS} == (REASONS - {"processing_error"}) | set(VERDICTS)
    assert {case.replay for case in CORPUS} >= {"skipped", None, "accepted", "duplicate"}


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_decoding_alone_decides_every_reason_it_owns(case: Case) -> None:
    outcome = outcome_of_decode(case.sent)
    if case.expect in PROCESSOR_OUTCOMES:
        assert outcome == "decoded"
    else:
        assert outcome == case.expect


def test_every_corpus_record_gets_its_expected_outcome_on_the_live_path() -> None:
    live = LivePath()
    outcomes = {case.name: live.feed(case.sent, CORPUS_CLOCK) for case in CORPUS}
    assert outcomes == {case.name: [case.expect] for case in CORPUS}
    # One dead letter per malformed record, with its reason and its bytes untouched.
    malformed = [case for case in CORPUS if case.malformed]
    assert [letter.reason.value for letter in live.letters] == [case.expect for case in malformed]
    for letter, case in zip(live.letters, malformed, strict=True):
        assert keeps(letter, case.sent.value or b""), case.name
    assert all(letter.message for letter in live.letters)


def keeps(letter: DeadLetter, value: bytes) -> bool:
    """The letter holds the record's bytes: all of them, or at least the first 64 KiB of a
    record too large to process (a letter must still fit a Kafka message); for one event of
    a batch record, that event's (see `event_bytes`)."""
    index = letter.source.index if isinstance(letter.source, KafkaSource) else None
    if index is not None:
        return letter.original_bytes() == event_bytes(value, index)
    raw = letter.original_bytes()
    whole = min(len(value), MAX_RECORD_BYTES)
    return letter.raw_size == len(value) and len(raw) >= whole and value.startswith(raw)


def test_every_corpus_record_gets_its_expected_outcome_in_replay() -> None:
    lined = [case for case in CORPUS if case.replay is not None]
    letters: list[DeadLetter] = []
    report = replay_lines(
        [case.sent.value or b"" for case in lined],
        JOURNEYS,
        source_name="bad-records",
        on_dead_letter=letters.append,
    ).report
    by_line = {letter.source.line: letter for letter in letters}
    assert len(by_line) == len(letters)  # one dead letter per line at most
    assert all(isinstance(letter.source, FileSource) for letter in letters)
    outcomes = {
        case.name: by_line[line].reason.value if line in by_line else "processed"
        for line, case in enumerate(lined, start=1)
    }
    expected = {
        case.name: "processed" if case.replay in (*VERDICTS, "skipped") else case.replay
        for case in lined
    }
    assert outcomes == expected
    # Processed lines: the report counts each, and tells duplicates from the rest.
    assert report.read == sum(case.replay != "skipped" for case in lined)
    assert report.valid == sum(case.replay in VERDICTS for case in lined)
    assert report.duplicate == sum(case.replay == "duplicate" for case in lined)
    assert report.late == 0
    assert sum(report.rejected.values()) == len(letters)


def test_a_redelivered_event_is_a_duplicate_with_no_second_effect() -> None:
    """The rule (tests/fuzz.py): an event_id the same user already sent is a redelivery, counted
    as a duplicate; the first delivery wins, even when the redelivery carries other content."""
    valid = [case for case in CORPUS if case.expect in VERDICTS]
    redelivered = [case for case in valid if case.expect == "duplicate"]
    assert len(redelivered) >= 4

    def replay(values: list[bytes]) -> tuple[list[TopicRecord], dict[str, Any]]:
        triggers: list[TopicRecord] = []
        report = replay_lines(values, JOURNEYS, on_trigger=triggers.append, close_open=True)
        summary = report.report.to_dict()
        return triggers, summary

    with_redeliveries, summary = replay([case.sent.value or b"" for case in valid])
    firsts_only, baseline = replay(
        [case.sent.value or b"" for case in valid if case.expect == "accepted"]
    )
    assert summary["events"]["duplicate"] == len(redelivered)
    assert with_redeliveries  # the cart left behind: a drop-off to compare
    assert with_redeliveries == firsts_only
    # Everything else the run decided too: journeys, drop-offs, revenue counted once, tiers.
    assert {k: v for k, v in summary.items() if k != "events"} == {
        k: v for k, v in baseline.items() if k != "events"
    }
    # Not a vacuous comparison: as new events (fresh event ids) the same records do change
    # the outcome: the cart reaches checkout, the revenue doubles.
    as_new = [
        case.sent.value or b""
        if case.expect == "accepted"
        else orjson.dumps(orjson.loads(case.sent.value or b"") | {"event_id": f"new-{n}"})
        for n, case in enumerate(valid)
    ]
    new_triggers, new_summary = replay(as_new)
    assert new_triggers != firsts_only
    assert new_summary["commerce"] != baseline["commerce"]


# -- the fuzzer --------------------------------------------------------------------------------


def test_the_fuzzer_is_deterministic() -> None:
    records = list(generate(users=20, seed=1, start_ms=START, bad_ratio=0.0))
    first = list(mutations(records, 2_000, seed=9))
    assert first == list(mutations(records, 2_000, seed=9))
    assert first != list(mutations(records, 2_000, seed=10))


class FuzzRun:
    """Valid simulated traffic with `count` mutations of it interleaved, each right after the
    record it was made from, through the live path and through `replay_lines`."""

    def __init__(self, count: int, seed: int, users: int) -> None:
        records = list(generate(users=users, seed=seed, start_ms=START, bad_ratio=0.0))
        originals = [decode_event(raw) for raw in records]
        live = LivePath()
        self.outcomes: Counter[str] = Counter()  # of the mutations, live
        self.lines: list[bytes] = []  # what a file can hold: replay's input
        self.original_lines: set[int] = set()  # (1-based) the valid records among them
        started = time.perf_counter()
        fed = 0  # originals fed so far
        for mutation in mutations(records, count, seed):
            while fed <= mutation.origin:
                event = originals[fed]
                sent = Sent(event.kind, event.user_id.encode(), records[fed])
                # Valid traffic is processed, whatever the mutations before it did.
                (outcome,) = live.feed(sent, event.ts + 60_000)
                assert outcome in PROCESSED
                self.lines.append(records[fed])
                self.original_lines.add(len(self.lines))
                fed += 1
            # The clock of real-time traffic: a minute after the original's event time.
            now = originals[mutation.origin].ts + 60_000
            self.outcomes.update(live.feed(mutation.sent, now))
            value = mutation.sent.value
            if value is not None and b"\n" not in value and b"\r" not in value:
                self.lines.append(value)
        live.processor.flush(close_open=True)
        self.live_seconds = time.perf_counter() - started
        self.live_letters = live.letters
        self.originals = fed
        started = time.perf_counter()
        self.replay_letters: list[DeadLetter] = []
        self.report = replay_lines(
            self.lines, JOURNEYS, on_dead_letter=self.replay_letters.append, close_open=True
        ).report
        self.replay_seconds = time.perf_counter() - started

    def summary(self) -> str:
        return (
            f"{sum(self.outcomes.values())} mutations of {self.originals} records, live path "
            f"{self.live_seconds:.1f} s: {dict(self.outcomes.most_common())}; replay "
            f"{self.replay_seconds:.1f} s: {self.report.to_dict()['events']}"
        )


def check_fuzz_run(run: FuzzRun) -> None:
    print(run.summary())  # the figures, with -s
    # Live path: every mutation rejected with a known reason or processed; never an error.
    assert set(run.outcomes) <= (REASONS - {"processing_error"}) | PROCESSED
    rejected = sum(n for outcome, n in run.outcomes.items() if outcome in REASONS)
    assert len(run.live_letters) == rejected
    assert all(letter.message for letter in run.live_letters)
    # The fuzzer reaches every reason and both sides of the line, or it proves little.
    assert set(run.outcomes) >= (REASONS - {"processing_error"} - NOT_FUZZED) | set(VERDICTS)
    # Replay: a dead letter per rejected line, exactly, with the reason decoding gives.
    by_line = Counter(letter.source.line for letter in run.replay_letters)  # type: ignore[union-attr]
    assert max(by_line.values()) == 1
    reasons = {letter.source.line: letter.reason.value for letter in run.replay_letters}  # type: ignore[union-attr]
    wrong = []
    for line, raw in enumerate(run.lines, start=1):
        if not raw.strip(b" \t\r\n\x0b\x0c"):
            assert line not in reasons  # a blank line is no record
            continue
        try:
            decode_event(raw)
            decoded = None
        except RecordRejected as rejection:
            decoded = rejection.reason.value
        got = reasons.get(line)
        if got != decoded and not (decoded is None and got == "future_timestamp"):
            wrong.append((line, decoded, got))
    assert wrong == []
    report = run.report
    assert report.valid + sum(report.rejected.values()) == report.read
    assert sum(report.rejected.values()) == len(run.replay_letters)
    assert not run.original_lines & set(reasons)  # every valid record processed


def test_fuzzed_records_never_crash_and_every_rejection_is_one_dead_letter() -> None:
    check_fuzz_run(FuzzRun(count=20_000, seed=1, users=400))


@pytest.mark.faults
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", [2, 3])
def test_fuzzed_records_never_crash_long(seed: int) -> None:
    check_fuzz_run(FuzzRun(count=100_000, seed=seed, users=2000))


# -- properties --------------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
VALID_RAW = list(generate(users=10, seed=3, start_ms=START, bad_ratio=0.0))
VALID = [orjson.loads(raw) for raw in VALID_RAW]


CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/x-ndjson",
        "Application/JSON; charset=utf-8",
        "text/plain",
        "application/x-ndjson; charset=latin1",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300),
    st.sampled_from(["click", "share", "purchase", "group_chat"]),
    CONTENT_TYPES,
)
def test_any_bytes_decode_or_are_rejected(value: bytes, kind: str, media: str | None) -> None:
    headers = [("content-type", media.encode())] if media is not None else []
    with suppress(RecordRejected):  # anything else fails the test
        decoded = decode_message(value, headers=headers, topic_kind=kind, key=b"u1")
        if isinstance(decoded, Batch):  # and each event is decoded or rejected alone
            assert decoded.items
            for index, _ in decoded.items:
                decoded.raw_of(index)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(VALID_RAW) | st.binary(max_size=60), min_size=1, max_size=6))
def test_any_lines_make_a_batch_of_their_events_or_are_rejected(lines: list[bytes]) -> None:
    value = b"\n".join(lines)
    headers = [("content-type", b"application/x-ndjson")]
    with suppress(RecordRejected):  # rejected whole: empty, or too many events
        decoded = decode_message(value, headers=headers, topic_kind=None, key=None)
        assert isinstance(decoded, Batch)
        for index, item in decoded.items:
            line = decoded.raw_of(index)
            assert line == value.split(b"\n")[index].rstrip(b"\r")
            try:  # each line decides on its own, exactly as a line of a file would
                alone: object = decode_event(line)
            except RecordRejected as rejection:
                alone = rejection.reason
            decided = item.reason if isinstance(item, RecordRejected) else item
            assert decided == alone


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_any_json_in_any_field_decodes_or_is_rejected(record: dict[str, Any], data: Any) -> None:
    name = data.draw(st.sampled_from([*record, "props", "amount", "extra"]))
    raw = orjson.dumps(record | {name: data.draw(JSON)})
    key = str(record["user_id"]).encode()
    with suppress(RecordRejected):  # anything else fails the test
        event = decode_message(raw, headers=None, topic_kind=record["kind"], key=key)
        assert not isinstance(event, Batch)
        PartitionProcessor(JourneyEngine(JOURNEYS)).process(event)
