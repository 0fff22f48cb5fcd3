"""One exception tree for LinkWatch. Control flow (rejections) is separate from failures."""

from __future__ import annotations

from enum import StrEnum


class LinkWatchError(Exception):
    """Root of every error LinkWatch raises on purpose."""


class ConfigError(LinkWatchError):
    """A journeys/configuration file is invalid; the message names the place and the fix."""


class RejectReason(StrEnum):
    """Why an input record was rejected. Stable codes: dashboards and consumers key on them."""

    TOO_LARGE = "too_large"
    EMPTY = "empty"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_KIND = "unknown_kind"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"
    NEGATIVE_AMOUNT = "negative_amount"
    FUTURE_TIMESTAMP = "future_timestamp"
    KEY_MISMATCH = "key_mismatch"  # live: the Kafka key is not the record's user_id
    TOPIC_MISMATCH = "topic_mismatch"  # live: the record's kind is not its topic's kind
    PROCESSING_ERROR = "processing_error"  # live: an unexpected error; logged with its traceback
    TOO_MANY_EVENTS = "too_many_events"  # a batch record over the events-per-record limit
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"  # live: a content-type we cannot read


class RecordRejected(LinkWatchError):  # a verdict on a record, not a failure
    """An input record that cannot be accepted. Not fatal: it becomes a dead letter."""

    def __init__(self, reason: RejectReason, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field

    def __repr__(self) -> str:
        return f"RecordRejected({self.reason.value!r}, {self.message!r}, field={self.field!r})"
