"""Bytes in, validated events out: orjson parsing plus pydantic validation, typed rejections.

Everything that can go wrong with a record is a `RecordRejected` with a stable reason code,
the field at fault and a message a producer team can act on. Nothing here raises anything else
for bad input.

`decode_record` is the whole check of one input record, live or offline: the live worker calls
it with the record's topic and Kafka key, `replay` (a file has neither) through `decode_event`.
"""

from __future__ import annotations

import reprlib
from typing import Any, Final

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from linkwatch.errors import RecordRejected, RejectReason
from linkwatch.events import EVENT_MODELS, KINDS, MAX_RECORD_BYTES, Event

_MISSING_TYPES: Final = frozenset({"missing"})
_KIND_LIST: Final = ", ".join(KINDS)


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
    event = decode_event(value)
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
            "the Kafka key is not the record's user_id (records are keyed by user_id)",
            "user_id",
        )
    return event


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
        return model.model_validate(data)  # type: ignore[return-value]
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
