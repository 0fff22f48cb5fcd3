"""Bad input for the fault suite: the hand-made corpus and a seeded fuzzer of valid records.

Both describe records the way a producer sends them (`Sent`): the kind of topic a record goes
to, its Kafka key, its value (None: a tombstone) and its headers. The live test sends exactly
that; offline tests hand the same things to `decode_message`, as the worker does.

The corpus is `tests/data/bad-records.jsonl`, one case a line:

    name       unique, says what is wrong
    category   one of CATEGORIES
    topic      the kind whose topic the record is sent to ("click", ...)
    key        the Kafka key as text, or null (no key); `key_b64` instead for bytes
    value      the record as text, or null (a tombstone); `value_b64` instead for bytes
    headers    optional {"name": "value"}: the record's Kafka headers (e.g. content-type)
    repeat     optional {"@NAME@": [piece, times]}: each placeholder in the value becomes piece
               repeated `times` times (huge strings and nesting, built on load)
    expect     what the live worker decides: a reject reason (`errors.RejectReason`), or
               "accepted", or "duplicate"
    replay     optional: what `linkwatch replay` decides for the value as one line of a file,
               when it differs (no key or topic there: "accepted" for a mismatch; "skipped" for
               a blank line), or null when no line can hold the value (a tombstone, a newline)

Duplicate event ids. Producers deliver at least once, so a record carrying an `event_id` the
same user already sent (within the last `dedup_window` events of that user, 32 by default) is
a redelivery, not an error: it is counted as a duplicate (`linkwatch_events_duplicate_total`,
the report's `duplicate`), is not dead-lettered, and has no effect, whatever else it carries;
the first delivery wins. The same `event_id` from another user is another event. A redelivery
that is itself malformed is rejected like any malformed record.

The fuzzer (`mutations`) turns valid records into `count` mutations, deterministically for a
seed: byte flips, inserts, deletes and splices, truncation, field deletion and renaming, type
and value swaps, huge values, deep nesting, NaN and Infinity, unicode edge cases, edge
timestamps and amounts, duplicate JSON keys, wrong keys and topics, tombstones, redeliveries,
and stacks of several of these.
"""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson

from linkwatch.events import KINDS, MAX_TS_MS, MIN_TS_MS

CORPUS_PATH: Final = Path(__file__).parent / "data" / "bad-records.jsonl"

# The categories of bad input the issue names, plus the valid records the cases need (the
# originals that duplicates repeat) and a few more kinds of malformed record.
CATEGORIES: Final = (
    "valid",
    "truncated_json",
    "wrong_type",
    "huge_string",
    "huge_nesting",
    "invalid_utf8",
    "nan_infinity",
    "wrong_key",
    "wrong_field_name",
    "topic_mismatch",
    "future_timestamp",
    "ancient_timestamp",
    "negative_amount",
    "duplicate_id",
    "unknown_kind",
    "empty",
    "tombstone",
    "not_an_object",
    "missing_field",
    "invalid_value",
    "unicode",
    "batch",  # a record that carries events (a JSON array, or NDJSON): bad as a whole
)
VERDICTS: Final = ("accepted", "duplicate")


class Sent(NamedTuple):
    """One record as a producer sends it."""

    topic_kind: str  # the kind whose input topic it goes to
    key: bytes | None
    value: bytes | None  # None: a tombstone
    headers: tuple[tuple[str, bytes], ...] = ()


def event_bytes(value: bytes, index: int) -> bytes:
    """What a dead letter keeps of the event at `index` of a batch record (README, "Batch
    records"): its NDJSON line as sent, or its JSON array element re-serialised compactly."""
    if value.lstrip(b" \t\r\n").startswith(b"["):
        return orjson.dumps(orjson.loads(value)[index])
    return value.split(b"\n")[index].rstrip(b"\r")


# -- the corpus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    category: str
    sent: Sent
    expect: str  # live: a reject reason, "accepted" or "duplicate"
    replay: str | None  # as a line of a file: the same, "skipped", ...; None: not a line

    @property
    def malformed(self) -> bool:
        return self.expect not in VERDICTS


def load_corpus(path: Path = CORPUS_PATH) -> list[Case]:
    cases = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if line.strip():
            cases.append(_case(orjson.loads(line), f"{path.name}:{number}"))
    return cases


def _case(entry: dict[str, Any], where: str) -> Case:
    value = _bytes_of(entry, "value")
    if value is not None:
        for placeholder, (piece, times) in entry.get("repeat", {}).items():
            assert placeholder.encode() in value, f"{where}: {placeholder} not in the value"
            value = value.replace(placeholder.encode(), piece.encode() * times)
    replay = entry.get("replay", entry["expect"])
    if value is None or b"\n" in value or b"\r" in value:
        assert replay is None, f"{where}: no line of a file can hold this value: replay null"
    assert entry["category"] in CATEGORIES, f"{where}: unknown category {entry['category']}"
    return Case(
        name=entry["name"],
        category=entry["category"],
        sent=Sent(
            entry["topic"],
            _bytes_of(entry, "key"),
            value,
            tuple((name, text.encode()) for name, text in entry.get("headers", {}).items()),
        ),
        expect=entry["expect"],
        replay=replay,
    )


def _bytes_of(entry: dict[str, Any], name: str) -> bytes | None:
    if f"{name}_b64" in entry:
        return base64.b64decode(entry[f"{name}_b64"])
    text = entry[name]
    return None if text is None else str(text).encode()


# -- the fuzzer ------------------------------------------------------------------------------


class Mutation(NamedTuple):
    operator: str  # the operators applied, "+"-joined
    origin: int  # index of the valid record it was made from
    sent: Sent


def mutations(records: Sequence[bytes], count: int, seed: int) -> Iterator[Mutation]:
    """`count` mutations of `records` (valid, decodable), spread evenly over them in order:
    mutation n is made from record n * len(records) // count. Same arguments, same output."""
    rng = random.Random(seed)
    parsed = [orjson.loads(raw) for raw in records]
    users = sorted({data["user_id"] for data in parsed})
    for n in range(count):
        origin = n * len(records) // count
        data = parsed[origin]
        draft = _Draft(data["kind"], data["user_id"].encode(), data)
        context = _Context(records, users, data["ts"] if isinstance(data["ts"], int) else None)
        steps = 1 if rng.random() < 0.75 else rng.randint(2, 4)
        names = []
        for _ in range(steps):
            name, operator = rng.choice(OPERATORS)
            operator(rng, draft, context)
            names.append(name)
        yield Mutation("+".join(names), origin, draft.sent())


class _Context(NamedTuple):
    records: Sequence[bytes]  # for splices
    users: list[str]  # for wrong keys and swapped user ids
    ts: int | None  # the origin's event time, when given in epoch ms


class _Draft:
    """A record being mutated: structured (a parsed JSON value) until a byte-level operator
    touches it, bytes from then on. Values JSON cannot carry as Python objects (NaN, huge
    numbers, deep nesting, lone surrogates, invalid UTF-8) go in as tokens: a marker string
    replaced by its raw bytes when serialised."""

    def __init__(self, topic_kind: str, key: bytes | None, data: Any) -> None:
        self.topic_kind = topic_kind
        self.key = key
        self.data: Any = data  # None once in bytes (then `raw` holds them)
        self.raw: bytes | None = None
        self.tombstone = False
        self._tokens: dict[str, bytes] = {}

    def structured(self) -> dict[str, Any] | None:
        """The record as a dict, to edit in place, if it still is one."""
        if self.raw is None and isinstance(self.data, dict):
            self.data = dict(self.data)  # never edit the origin
            return self.data
        return None

    def token(self, raw: bytes) -> str:
        marker = f"\x01fuzz{len(self._tokens)}\x01"
        self._tokens[marker] = raw
        return marker

    def to_bytes(self, option: int = 0) -> bytearray:
        """The record as bytes, from now on (`option`: orjson's, when still structured)."""
        if self.raw is None:
            raw = orjson.dumps(self.data, option=option)
            for marker, token in self._tokens.items():
                raw = raw.replace(orjson.dumps(marker), token)
            self.raw = raw
            self.data = None
        self.tombstone = False
        return bytearray(self.raw)

    def set_bytes(self, raw: bytes | bytearray) -> None:
        self.raw = bytes(raw)
        self.data = None
        self.tombstone = False

    def sent(self) -> Sent:
        value = None if self.tombstone else bytes(self.to_bytes())
        return Sent(self.topic_kind, self.key, value)


Operator = Callable[[random.Random, _Draft, _Context], None]

# Values of every JSON type, for type swaps and unknown fields.
SAMPLE_VALUES: Final[tuple[Any, ...]] = (
    0,
    -1,
    1,
    1.5,
    -0.0,
    True,
    False,
    None,
    "",
    "x",
    "0",
    "null",
    "true",
    [],
    {},
    [1, "a"],
    {"a": 1},
    9_223_372_036_854_775_807,
    -9_223_372_036_854_775_808,
)
# Raw JSON (or near-JSON) tokens: what a sloppy producer or a broken encoder writes.
TOKENS: Final = (
    b"NaN",
    b"-NaN",
    b"Infinity",
    b"-Infinity",
    b"nan",
    b"inf",
    b"1e999",
    b"-1e999",
    b"1e-999",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"123456789012345678901234567890",
    b"-0",
    b"0.0",
    b"1E400",
    b"01",
    b"+1",
    b".5",
    b"1.",
    b"0x10",
    b"True",
    b"None",
    b"undefined",
    b"'x'",
    b'"\\ud800"',
    b'"\\udfff\\ud800"',
    b'"\\u0000"',
    b'"\\uffff"',
    b'"\\u00"',
    b'"\xff"',
    b'"\xc0\xaf"',
    b'"\xed\xa0\x80"',
    b'"\xf4\x90\x80\x80"',
)
BYTES: Final = (
    b"\x00",
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xc0",
    b"\xc3",
    b"\xe4\xbd",
    b"\xf0\x9f",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    b'"',
    b"\\",
    b"\\u",
    b"\\ud800",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\n",
    b"\r",
    b"\t",
    b" ",
    b"e",
    b"-",
    b".",
    b"0",
)
# Strings orjson can write that still trip up text handling somewhere.
UNICODE: Final = (
    "\x00",
    "\x7f",
    "\ufeff",
    "\uffff",
    "\U0010ffff",
    "\u202e",
    "e\u0301",
    "\u200d",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467",
    "\uff12\uff10\uff12\uff14",
    "\u0441",
    "\u00a0",
    "\u2028",
    "\u0085",
    "\ud7ff",
    "\ue000",
    "\U0001d518",
    "\u01c5",
    "\u0130",
    "\u00df",
    "\uff43\uff4c\uff49\uff43\uff4b",
    "\u754c" * 40,
)
# Raw byte sequences that are not UTF-8, or are JSON escapes of lone surrogates.
BAD_TEXT: Final = (
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\\ud800",
    b"\\udc00\\ud800",
)
AMOUNTS: Final[tuple[Any, ...]] = (
    "-0",
    "0",
    "0.00",
    "-0.01",
    -1,
    -0.5,
    "-129.00",
    "1e999999999",
    "-1e999999999",
    "1e-999999999",
    "0e999999999",
    "NaN",
    "sNaN",
    "Infinity",
    "-Infinity",
    "1e17",
    "1e18",
    "0.000001",
    "0.0000001",
    "999999999999.999999",
    "1_000",
    " 1",
    "1 ",
    "\uff11",
    "0x10",
    1e308,
    5e-324,
    10**17,
    10**19,
    "129.00",
    129,
)
PROPS: Final[tuple[Any, ...]] = (
    {f"k{i}": i for i in range(32)},
    {f"k{i}": i for i in range(33)},
    {"k" * 64: 1},
    {"k" * 65: 1},
    {"": 1},
    {"a": {"b": 1}},
    {"a": [1]},
    {"a": "x" * 1024},
    {"a": "x" * 1025},
    {"a": None, "b": 1.5, "c": True, "d": -9_223_372_036_854_775_808},
    {"follow": True},
    [],
    "props",
)
NEST_DEPTHS: Final = (2, 50, 254, 255, 1000, 1023, 1024, 1025, 1100, 5000, 40_000)
HUGE_LENGTHS: Final = (129, 1025, 2049, 10_000, 70_000)


def _pick_field(rng: random.Random, data: dict[str, Any]) -> str | None:
    return rng.choice(list(data)) if data else None


# -- byte-level operators --------------------------------------------------------------------


def flip_bits(rng: random.Random, draft: _Draft, _: _Context) -> None:
    raw = draft.to_bytes()
    for _ in range(rng.randint(1, 3)):
        if raw:
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    draft.set_bytes(raw)


def set_byte(rng: random.Random, draft: _Draft, _: _Context) -> None:
    raw = draft.to_bytes()
    if raw:
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    draft.set_bytes(raw)


def insert_bytes(rng: random.Random, draft: _Draft, _: _Context) -> None:
    raw = draft.to_bytes()
    at = rng.randint(0, len(raw))
    piece = rng.choice(BYTES) if rng.random() < 0.7 else rng.randbytes(rng.randint(1, 8))
    draft.set_bytes(raw[:at] + piece + raw[at:])


def delete_span(rng: random.Random, draft: _Draft, _: _Context) -> None:
    raw = draft.to_bytes()
    at = rng.randint(0, len(raw))
    draft.set_bytes(raw[:at] + raw[at + rng.randint(1, 16) :])


def repeat_span(rng: random.Random, draft: _Draft, _: _Context) -> None:
    raw = draft.to_bytes()
    at = rng.randint(0, len(raw))
    span = raw[at : at + rng.randint(1, 32)]
    draft.set_bytes(raw[:at] + span * rng.randint(2, 4) + raw[at:])


def truncate(rng: random.Random, draft: _Draft, _: _Context) -> None:
    raw = draft.to_bytes()
    draft.set_bytes(raw[: rng.randint(0, max(len(raw) - 1, 0))])


def splice(rng: random.Random, draft: _Draft, context: _Context) -> None:
    raw = draft.to_bytes()
    other = rng.choice(context.records)
    draft.set_bytes(raw[: rng.randint(0, len(raw))] + other[rng.randint(0, len(other)) :])


def replace_token(rng: random.Random, draft: _Draft, _: _Context) -> None:
    """A scalar of the record (string, number or literal) becomes a raw token."""
    raw = bytes(draft.to_bytes())
    spans = _scalar_spans(raw)
    if spans:
        start, end = rng.choice(spans)
        raw = raw[:start] + rng.choice(TOKENS) + raw[end:]
    draft.set_bytes(raw)


def _scalar_spans(raw: bytes) -> list[tuple[int, int]]:
    """Where the values after a `:` are, roughly: enough to aim at them."""
    return [match.span(1) for match in _SCALAR.finditer(raw)]


_SCALAR: Final = re.compile(rb':\s*("(?:[^"\\]|\\.)*"?|[^,}\]]*)', re.DOTALL)


def whitespace(rng: random.Random, draft: _Draft, _: _Context) -> None:
    """Valid JSON laid out differently (indented, padded), or nothing but whitespace."""
    choice = rng.randrange(4)
    if choice == 0:
        draft.set_bytes(draft.to_bytes(orjson.OPT_INDENT_2))
    elif choice == 1:
        pad = rng.choice((b" ", b"\t", b"\r\n", b"\n\n"))
        draft.set_bytes(pad + draft.to_bytes() + pad)
    else:
        draft.set_bytes(rng.choice((b"", b" ", b"\t", b"\r\n", b" \n ", b"\x0b", b"\x0c")))


# -- structural operators --------------------------------------------------------------------


def _structural(
    operator: Callable[[random.Random, _Draft, dict[str, Any], _Context], None],
) -> Operator:
    """A structural operator on a record that is no longer a dict falls back to a bit flip."""

    def apply(rng: random.Random, draft: _Draft, context: _Context) -> None:
        data = draft.structured()
        if data is None:
            flip_bits(rng, draft, context)
        else:
            operator(rng, draft, data, context)

    apply.__name__ = operator.__name__
    return apply


@_structural
def delete_field(rng: random.Random, _: _Draft, data: dict[str, Any], __: _Context) -> None:
    name = _pick_field(rng, data)
    if name is not None:
        del data[name]


@_structural
def swap_type(rng: random.Random, _: _Draft, data: dict[str, Any], __: _Context) -> None:
    name = _pick_field(rng, data)
    if name is not None:
        data[name] = rng.choice(SAMPLE_VALUES)


@_structural
def swap_values(rng: random.Random, _: _Draft, data: dict[str, Any], __: _Context) -> None:
    if len(data) >= 2:
        first, second = rng.sample(list(data), 2)
        data[first], data[second] = data[second], data[first]


@_structural
def copy_value(rng: random.Random, _: _Draft, data: dict[str, Any], __: _Context) -> None:
    if len(data) >= 2:
        source, target = rng.sample(list(data), 2)
        data[target] = data[source]


@_structural
def rename_field(rng: random.Random, _: _Draft, data: dict[str, Any], __: _Context) -> None:
    name = _pick_field(rng, data)
    if name is None:
        return
    head, _sep, tail = name.partition("_")
    renamed = rng.choice(
        (
            head + tail.capitalize(),  # camelCase
            name.upper(),
            name.capitalize(),
            name + " ",
            " " + name,
            "_" + name,
            name.replace("_", "-"),
            name + "\x00",
            name.replace("i", "\u0456"),  # Cyrillic i
        )
    )
    data[renamed] = data.pop(name)


@_structural
def unknown_field(rng: random.Random, _: _Draft, data: dict[str, Any], __: _Context) -> None:
    data[rng.choice(("extra", "v", "__proto__", "constructor", "", "\u0000"))] = rng.choice(
        SAMPLE_VALUES
    )


@_structural
def duplicate_key(rng: random.Random, draft: _Draft, data: dict[str, Any], _: _Context) -> None:
    """The same key twice (orjson keeps the last): one of the record's keys again, after or
    before the rest, with another value."""
    name = _pick_field(rng, data)
    if name is None:
        return
    again = orjson.dumps({name: rng.choice(SAMPLE_VALUES)})[1:-1]
    raw = bytes(draft.to_bytes())
    if rng.random() < 0.5:
        draft.set_bytes(raw[:-1] + b"," + again + b"}")
    else:
        draft.set_bytes(b"{" + again + b"," + raw[1:])


@_structural
def huge_value(rng: random.Random, draft: _Draft, data: dict[str, Any], _: _Context) -> None:
    name = rng.choice([*list(data), "props", "pad"])
    form = rng.randrange(4)
    if form == 0:
        data[name] = rng.choice(("x", "\u754c", "\x00", "a\u0301")) * rng.choice(HUGE_LENGTHS)
    elif form == 1:
        digits = rng.choice((20, 400, 5000))
        data[name] = draft.token(b"9" * digits)
    elif form == 2:
        data[name] = [0] * rng.choice((10, 1000, 20_000))
    else:
        data[name] = {f"k{i}": i for i in range(rng.choice((33, 1000, 5000)))}


@_structural
def deep_nesting(rng: random.Random, draft: _Draft, data: dict[str, Any], _: _Context) -> None:
    depth = rng.choice(NEST_DEPTHS)
    if rng.random() < 0.5:
        nested = b"[" * depth + b"1" + b"]" * depth
    else:
        nested = b'{"a":' * depth + b"1" + b"}" * depth
    where = rng.randrange(4)
    if where == 0:  # the whole record, inside arrays
        draft.set_bytes(b"[" * depth + bytes(draft.to_bytes()) + b"]" * depth)
        return
    name = (_pick_field(rng, data) or "kind", "props", "nested")[where - 1]
    data[name] = {"deep": draft.token(nested)} if name == "props" else draft.token(nested)


@_structural
def nan_infinity(rng: random.Random, draft: _Draft, data: dict[str, Any], _: _Context) -> None:
    name = rng.choice([*list(data), "amount", "props"])
    literal = rng.choice((b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"))
    if name == "props":
        data[name] = {"x": draft.token(literal)}
    elif rng.random() < 0.3:
        data[name] = rng.choice(("NaN", "Infinity", "-Infinity", "nan", "inf"))
    else:
        data[name] = draft.token(literal)


@_structural
def unicode_edge(rng: random.Random, draft: _Draft, data: dict[str, Any], _: _Context) -> None:
    strings = [name for name, value in data.items() if isinstance(value, str)]
    if not strings:
        return
    name = rng.choice(strings)
    value = data[name]
    at = rng.randint(0, len(value))
    if rng.random() < 0.7:
        data[name] = value[:at] + rng.choice(UNICODE) + value[at:]
    else:
        bad = rng.choice(BAD_TEXT)
        quoted = orjson.dumps(value[:at])[:-1] + bad + orjson.dumps(value[at:])[1:]
        data[name] = draft.token(quoted)


@_structural
def edge_timestamp(rng: random.Random, _: _Draft, data: dict[str, Any], context: _Context) -> None:
    ts = context.ts if context.ts is not None else MIN_TS_MS + 1
    data["ts"] = rng.choice(
        (
            MIN_TS_MS - 1,
            MIN_TS_MS,
            MAX_TS_MS - 1,
            MAX_TS_MS,
            0,
            -1,
            ts // 1000,
            ts * 1000,
            ts + 86_400_001,
            ts - 1,
            2**53,
            2**63 - 1,
            float(ts),
            str(ts),
            "2024-11-22T08:00:00",
            "2024-11-22T08:00:00+08:00",
            "2024-11-22T08:00:00.123456789Z",
            "2024-11-22T08:00:00.1234567890Z",
            "1999-12-31T23:59:59.999Z",
            "2100-01-01T00:00:00Z",
            "2099-12-31T23:59:59.999Z",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            "2024-02-30T00:00:00Z",
            "2024-11-22t08:00:00z",
            "2024-11-22T08:00:00+24:00",
            "",
            "now",
        )
    )


@_structural
def edge_amount(rng: random.Random, _: _Draft, data: dict[str, Any], __: _Context) -> None:
    data["amount"] = rng.choice(AMOUNTS)


@_structural
def edge_props(rng: random.Random, _: _Draft, data: dict[str, Any], __: _Context) -> None:
    data["props"] = rng.choice(PROPS)


@_structural
def change_kind(rng: random.Random, _: _Draft, data: dict[str, Any], __: _Context) -> None:
    data["kind"] = rng.choice(
        (*KINDS, "view", "Click", "click ", "", "\u0441lick", None, 3, ["click"], {"k": 1})
    )


@_structural
def not_an_object(rng: random.Random, draft: _Draft, data: dict[str, Any], _: _Context) -> None:
    draft.data = rng.choice(([data], [], 42, "click", None, True, [[data]]))


# -- the envelope ----------------------------------------------------------------------------


def wrong_key(rng: random.Random, draft: _Draft, context: _Context) -> None:
    key = draft.key or b""
    draft.key = rng.choice(
        (
            None,
            b"",
            rng.choice(context.users).encode(),
            key + b" ",
            key.upper(),
            key + b"\x00",
            b"\xff\xfe",
            key[:-1],
        )
    )


def wrong_topic(rng: random.Random, draft: _Draft, _: _Context) -> None:
    draft.topic_kind = rng.choice([kind for kind in KINDS if kind != draft.topic_kind])


def tombstone(_: random.Random, draft: _Draft, __: _Context) -> None:
    draft.tombstone = True


def redeliver(_: random.Random, __: _Draft, ___: _Context) -> None:
    """The record unchanged: a redelivery, a duplicate once the original went first."""


def other_user(rng: random.Random, draft: _Draft, context: _Context) -> None:
    """The record of another user, consistently keyed: valid, and a new event for that user."""
    data = draft.structured()
    if data is None:
        flip_bits(rng, draft, context)
        return
    user = rng.choice(context.users)
    data["user_id"] = user
    draft.key = user.encode()


OPERATORS: Final[tuple[tuple[str, Operator], ...]] = tuple(
    (operator.__name__, operator)
    for operator in (
        flip_bits,
        set_byte,
        insert_bytes,
        delete_span,
        repeat_span,
        truncate,
        splice,
        replace_token,
        whitespace,
        delete_field,
        swap_type,
        swap_values,
        copy_value,
        rename_field,
        unknown_field,
        duplicate_key,
        huge_value,
        deep_nesting,
        nan_infinity,
        unicode_edge,
        edge_timestamp,
        edge_amount,
        edge_props,
        change_kind,
        not_an_object,
        wrong_key,
        wrong_topic,
        tombstone,
        redeliver,
        other_user,
    )
)
