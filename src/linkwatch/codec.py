"""Bytes in, validated events out: orjson parsing plus pydantic validation, typed rejections.

Everything that can go wrong with a record is a `RecordRejected` with a stable reason code,
the field at fault and a message a producer team can act on. Nothing here raises anything else
for bad input.

`decode_record` is the whole check of one input record, live or offline: the live worker calls
it with the record's topic and Kafka key, `replay` (a file has neither) through `decode_event`.

A live record may also carry a batch of events (`decode_message`): a JSON array of events, or
newline-delimited JSON (one event a line), told apart by the record's `content-type` header or,
without one, by its first byte (see the README, "Batch records"). Each event of a batch is
checked exactly as a record of its own would be; one that fails is rejected alone, with its
position in the batch, and the others go on.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from linkwatch.errors import RecordRejected, RejectReason
from linkwatch.events import EVENT_MODELS, KINDS, MAX_RECORD_BYTES, Event

_MISSING_TYPES: Final = frozenset({"missing"})
_KIND_LIST: Final = ", ".join(KINDS)

# Batch records. Kafka's default record limit is about 1 MB: a batch under it always fits.
DEFAULT_BATCH_MAX_BYTES: Final = 1_000_000
DEFAULT_BATCH_MAX_EVENTS: Final = 1000
JSON_TYPE: Final = "application/json"  # one event, or a JSON array of events
NDJSON_TYPES: Final = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
_JSON_WHITESPACE: Final = re.compile(rb"[ \t\r\n]*")
_NOT_BLANK: Final = re.compile(rb"[^ \t\r\n\x0b\x0c]")  # what bytes.isspace() is not
# A record without a content-type that fails as one JSON document may be NDJSON (see `_sniffed`).
_NOT_ONE_DOCUMENT: Final = frozenset(
    {RejectReason.TOO_LARGE, RejectReason.INVALID_JSON, RejectReason.INVALID_UTF8}
)

Part = TypeVar("Part")  # of a batch record: an array element or an NDJSON line

Headers = Sequence[tuple[str | bytes, bytes | None]] | Mapping[str, bytes | None]
"""A Kafka record's headers as aiokafka and Faust hand them over: (name, value) pairs."""


def decode_record(
    value: bytes | None, *, topic_kind: str | None, key: bytes | None, topic: str = ""
) -> Event:
    """Decode one input record as read from its source. Raises `RecordRejected` for every kind
    of bad input, checked in this order: a tombstone (None), then `decode_event`, then, for a
    record read from a Kafka topic (`topic_kind` is the kind that topic carries), a kind that
    is not the topic's and a Kafka `key` that is not the `user_id`. With `topic_kind` None (a
    line of a file: no topic, no key) neither is checked and `key` is ignored. `topic` only
    names the topic in messages."""
    if value is None:
        raise RecordRejected(RejectReason.EMPTY, "record is a tombstone (null value)")
    return _on_its_topic(decode_event(value), topic_kind, key, topic, batch=False)


def _on_its_topic(
    event: Event, topic_kind: str | None, key: bytes | None, topic: str, *, batch: bool
) -> Event:
    """`event` if it may come from this topic with this key (see `decode_record`)."""
    if topic_kind is None:
        return event
    if event.kind != topic_kind:
        raise RecordRejected(
            RejectReason.TOPIC_MISMATCH,
            f"field 'kind': {event.kind!r} record on the {topic_kind} topic {topic!r}",
            "kind",
        )
    if key != event.user_id.encode():
        raise RecordRejected(
            RejectReason.KEY_MISMATCH,
            "the Kafka key is not the event's user_id (a batch record carries only the events "
            "of the user it is keyed by)"
            if batch
            else "the Kafka key is not the record's user_id (records are keyed by user_id)",
            "user_id",
        )
    return event


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """Bounds on one batch record, whatever its events: bytes (checked before parsing) and
    events (checked before any event is validated). Each event also keeps the bounds of a
    record of its own (`MAX_RECORD_BYTES` and the field caps)."""

    max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    max_events: int = DEFAULT_BATCH_MAX_EVENTS


BatchFormat = Literal["array", "ndjson"]


@dataclass(frozen=True, slots=True)
class Batch:
    """The events of one batch record, in their order, each decoded or rejected on its own.

    `items` holds (index, event or rejection). The index is the event's position in the
    record: the array element, or the NDJSON line (0-based; blank lines are skipped but
    counted, so line number = index + 1). `raw_of(index)` is what a dead letter keeps of it."""

    format: BatchFormat
    items: list[tuple[int, Event | RecordRejected]]
    parts: Sequence[Any]  # by index: the lines (ndjson) or the parsed elements (array)
    record: bytes  # the whole value

    def raw_of(self, index: int) -> bytes:
        """The bytes of the event at `index`: its line as sent (NDJSON), or the array element
        re-serialised compactly (what a compact producer sent, byte for byte); for an element
        nested too deep to re-serialise (over 254 levels), the whole record."""
        part = self.parts[index]
        if self.format == "ndjson":
            line: bytes = part
            return line.rstrip(b"\r")
        try:
            return orjson.dumps(part)
        except orjson.JSONEncodeError:
            return self.record


def decode_message(
    value: bytes | None,
    *,
    headers: Headers | None,
    topic_kind: str | None,
    key: bytes | None,
    topic: str = "",
    limits: BatchLimits = BatchLimits(),  # noqa: B008  # frozen: one shared default is safe
) -> Event | Batch:
    """Decode one live input record: its event, or the events of a batch record.

    The format: the `content-type` header when there is one (`content_type_of`): JSON (one
    event, or an array of events when the value starts with `[`) or NDJSON. Without one: an
    array when the value's first non-whitespace byte is `[`, else one event, as always; or
    NDJSON, if it fails as one JSON document and its first line is a JSON object on its own
    (`_sniffed`). A single event is checked as by `decode_record`; each event of a batch as
    well, and rejected alone. Raises `RecordRejected` for what rejects the whole record: a
    tombstone, an unknown content-type, a batch over `limits`, an empty batch, an array that
    is not JSON, and everything that rejects a single event."""
    if value is None:
        raise RecordRejected(RejectReason.EMPTY, "record is a tombstone (null value)")
    media = content_type_of(headers) if headers else None
    first = value[:1]
    if first in (b" ", b"\t", b"\r", b"\n"):
        start = _after_whitespace(value)
        first = value[start : start + 1]
    if media is None or media == JSON_TYPE:
        if first == b"[":
            return _array(value, topic_kind, key, topic, limits)
        if media is not None:
            return decode_record(value, topic_kind=topic_kind, key=key, topic=topic)
        return _sniffed(value, topic_kind, key, topic, limits)
    return _ndjson(value, topic_kind, key, topic, limits)


def content_type_of(headers: Headers) -> str | None:
    """The media type of a record's `content-type` header (name in any case; if repeated, the
    last one counts), lower case, without parameters; None without one. Raises `RecordRejected`
    (`unsupported_content_type`) for a type other than JSON or NDJSON, or a charset other
    than UTF-8."""
    found: list[bytes | None] = []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, data in pairs:
        text = name.decode("latin-1") if isinstance(name, bytes) else name
        if text.lower() == "content-type":
            found.append(data)
    if not found:
        return None
    value = bytes(found[-1] or b"")  # Kafka allows a header without a value: none we read
    try:
        media, _, parameters = value.decode("ascii").partition(";")
    except UnicodeDecodeError:
        media, parameters = "(not ASCII)", ""
    media = media.strip().lower()
    if (media == JSON_TYPE or media in NDJSON_TYPES) and _is_utf8(parameters):
        return media
    raise RecordRejected(
        RejectReason.UNSUPPORTED_CONTENT_TYPE,
        f"content-type {_preview(value)} is not one LinkWatch reads: {JSON_TYPE} (one "
        "event, or an array of events) or application/x-ndjson (one event a line), UTF-8",
    )


def _is_utf8(parameters: str) -> bool:
    """No charset parameter, or UTF-8 (other parameters are ignored)."""
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


def _sniffed(
    value: bytes, topic_kind: str | None, key: bytes | None, topic: str, limits: BatchLimits
) -> Event | Batch:
    """A record without a content-type that does not start with `[`: one event, as always,
    unless it fails as one JSON document (too large, not JSON, not UTF-8) while its first
    non-blank line, at most `MAX_RECORD_BYTES`, is a JSON object on its own with more
    non-blank lines after it: then it is NDJSON. A malformed single record keeps its one
    rejection, as before batches existed."""
    try:
        return decode_record(value, topic_kind=topic_kind, key=key, topic=topic)
    except RecordRejected as rejection:
        if rejection.reason not in _NOT_ONE_DOCUMENT or not _starts_ndjson(value):
            raise
    return _ndjson(value, topic_kind, key, topic, limits)


def _after_whitespace(value: bytes) -> int:
    """Where the value starts, past leading JSON whitespace (found without a copy)."""
    match = _JSON_WHITESPACE.match(value)
    return match.end() if match else 0


def _starts_ndjson(value: bytes) -> bool:
    start = _after_whitespace(value)
    end = value.find(b"\n", start)
    if end < 0 or end - start > MAX_RECORD_BYTES or not _NOT_BLANK.search(value, end):
        return False
    try:
        return isinstance(orjson.loads(value[start:end]), dict)
    except orjson.JSONDecodeError:
        return False


def _array(
    value: bytes, topic_kind: str | None, key: bytes | None, topic: str, limits: BatchLimits
) -> Batch:
    _check_batch_size(value, limits)
    try:
        elements: list[Any] = orjson.loads(value)  # JSON starting with `[`: a list
    except orjson.JSONDecodeError as exc:  # no element can be told from the next
        raise _json_rejection(value, exc) from None
    _check_batch_count(len(elements), limits, "elements")
    # An element is bounded like a record of its own. Measured compactly (its own bytes are
    # not known once parsed), and only when the whole record could hold one too large.
    measure = len(value) > MAX_RECORD_BYTES

    def decode(element: Any) -> Event:
        if measure:
            _check_element_size(element)
        return validate_event(element)

    items = _batch_items(enumerate(elements), decode, topic_kind, key, topic)
    return Batch("array", items, elements, value)


def _ndjson(
    value: bytes, topic_kind: str | None, key: bytes | None, topic: str, limits: BatchLimits
) -> Batch:
    _check_batch_size(value, limits)
    lines = value.split(b"\n")
    # What `replay` skips as a blank line is skipped here too (a trailing newline, a separator).
    present = [
        (index, stripped)
        for index, line in enumerate(lines)
        if (stripped := line.rstrip(b"\r")) and not stripped.isspace()
    ]
    _check_batch_count(len(present), limits, "non-blank lines")
    items = _batch_items(present, decode_event, topic_kind, key, topic)
    return Batch("ndjson", items, lines, value)


def _batch_items(
    parts: Iterable[tuple[int, Part]],
    decode: Callable[[Part], Event],
    topic_kind: str | None,
    key: bytes | None,
    topic: str,
) -> list[tuple[int, Event | RecordRejected]]:
    """Each part of a batch (index, element or line) decoded and checked as a record of its
    own, or its rejection: one bad event never rejects the others."""
    items: list[tuple[int, Event | RecordRejected]] = []
    for index, part in parts:
        try:
            event = _on_its_topic(decode(part), topic_kind, key, topic, batch=True)
        except RecordRejected as rejection:
            items.append((index, rejection))
        else:
            items.append((index, event))
    return items


def _check_batch_size(value: bytes, limits: BatchLimits) -> None:
    if len(value) > limits.max_bytes:
        raise RecordRejected(
            RejectReason.TOO_LARGE,
            f"batch record is {len(value)} bytes; the limit is {limits.max_bytes}",
        )


def _check_batch_count(count: int, limits: BatchLimits, what: str) -> None:
    if count == 0:
        raise RecordRejected(RejectReason.EMPTY, f"batch record holds no events (no {what})")
    if count > limits.max_events:
        raise RecordRejected(
            RejectReason.TOO_MANY_EVENTS,
            f"batch record holds {count} events ({what}); the limit is {limits.max_events}",
        )


def _check_element_size(element: Any) -> None:
    try:
        size = len(orjson.dumps(element))
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: left to validation
        return
    if size > MAX_RECORD_BYTES:
        raise RecordRejected(
            RejectReason.TOO_LARGE,
            f"event is {size} bytes (compact JSON); the limit is {MAX_RECORD_BYTES}",
        )


def decode_event(raw: bytes) -> Event:
    """Decode one record. Raises `RecordRejected` for every kind of bad input."""
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordRejected(
            RejectReason.TOO_LARGE, f"record is {len(raw)} bytes; the limit is {MAX_RECORD_BYTES}"
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _json_rejection(raw, exc) from None
    return validate_event(data)


def validate_event(data: Any) -> Event:
    """Validate an already-parsed JSON value as an event."""
    if not isinstance(data, dict):
        raise RecordRejected(
            RejectReason.NOT_AN_OBJECT, f"record must be a JSON object, not {_json_type(data)}"
        )
    kind = data.get("kind")
    # Dispatch on `kind` by hand: cheaper than a discriminated union, and a clearer message.
    model = EVENT_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        if kind is None:
            raise RecordRejected(RejectReason.MISSING_FIELD, "field 'kind' is required", "kind")
        raise RecordRejected(
            RejectReason.UNKNOWN_KIND,
            f"field 'kind': unknown kind {_preview(kind)}; expected one of {_KIND_LIST}",
            "kind",
        )
    try:
        # The model's validator itself: model_validate adds only a Python frame per event.
        return model.__pydantic_validator__.validate_python(data)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise _validation_rejection(exc) from None


def _json_rejection(raw: bytes, exc: orjson.JSONDecodeError) -> RecordRejected:
    if not raw.strip():
        return RecordRejected(RejectReason.EMPTY, "record is empty")
    if "utf-8" in str(exc).lower():
        return RecordRejected(RejectReason.INVALID_UTF8, "record is not valid UTF-8")
    return RecordRejected(
        RejectReason.INVALID_JSON, f"record is not valid JSON: {exc.msg} at byte {exc.pos}"
    )


def _validation_rejection(exc: ValidationError) -> RecordRejected:
    # The first error decides the reason; the message lists up to three so producers see more.
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = _loc(first)
    reason = _reason(first, field)
    details = "; ".join(f"field '{_loc(err)}': {_describe(err)}" for err in errors[:3])
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return RecordRejected(reason, details + more, field)


def _reason(err: ErrorDetails, field: str) -> RejectReason:
    etype = err["type"]
    if etype in _MISSING_TYPES:
        return RejectReason.MISSING_FIELD
    if field == "amount" and etype == "greater_than_equal":
        return RejectReason.NEGATIVE_AMOUNT
    if etype.endswith("_type"):  # int_type, string_type, dict_type, ...: the JSON type is wrong
        return RejectReason.WRONG_TYPE
    return RejectReason.INVALID_VALUE


def _describe(err: ErrorDetails) -> str:
    msg = err["msg"]
    if err["type"] == "missing":
        return "is required"
    if "input" in err:
        return f"{msg} (got {_preview(err['input'])})"
    return msg


def _loc(err: ErrorDetails) -> str:
    return ".".join(str(part) for part in err["loc"]) or "(record)"


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def _preview(value: Any, limit: int = 40) -> str:
    """A short, safe rendering of an offending value for messages (never the whole thing)."""
    # reprlib, not repr: a value nested 1,000 deep would overflow the stack, and one of 60 KB
    # would be rendered whole only to be cut.
    text = _PREVIEW.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PREVIEW: Final = reprlib.Repr()
_PREVIEW.maxlevel = 3
_PREVIEW.maxstring = _PREVIEW.maxother = _PREVIEW.maxlong = 60
