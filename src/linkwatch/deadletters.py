"""Dead letters: every rejected input record, with why and where it came from."""

from __future__ import annotations

import base64
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from linkwatch.errors import RecordRejected, RejectReason
from linkwatch.events import MAX_RECORD_BYTES
from linkwatch.triggers import derive_id

# A record over MAX_RECORD_BYTES is rejected as too_large; its dead letter keeps that much of it.
MAX_KEPT_BYTES: Final = MAX_RECORD_BYTES


class FileSource(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal["file"] = "file"
    path: str
    line: int = Field(ge=1, description="1-based line number in the (decompressed) file")


class KafkaSource(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal["kafka"] = "kafka"
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    index: int | None = Field(
        default=None,
        ge=0,
        description="For one event of a batch record: its position in the record, 0-based (the "
        "JSON array's element, or the NDJSON line: line number = index + 1, blank lines "
        "counted). null: the whole record was rejected",
    )


Source = Annotated[FileSource | KafkaSource, Field(discriminator="type")]


class DeadLetter(BaseModel):
    """A rejected record. `raw` holds the original bytes, base64, untouched."""

    model_config = ConfigDict(frozen=True)

    dead_letter_id: str = Field(description="Deterministic: hash of the original bytes + reason")
    reason: RejectReason
    field: str | None = Field(description="The offending field, when one is to blame")
    message: str
    raw: str = Field(
        description="The original record bytes, base64-encoded; only the first "
        f"{MAX_KEPT_BYTES} of a larger record (see raw_truncated). For one event of a batch "
        "record (source.index set): that event's bytes, its NDJSON line as sent or its "
        "JSON array element re-serialised compactly"
    )
    raw_size: int = Field(ge=0, description="Size of the original record (or event) in bytes")
    raw_truncated: bool = Field(
        default=False, description="raw holds only the start of the record (it was larger)"
    )
    source: Source

    @classmethod
    def from_rejection(
        cls, raw: bytes, rejection: RecordRejected, source: FileSource | KafkaSource
    ) -> DeadLetter:
        return cls(
            dead_letter_id=derive_id("dead_letter", rejection.reason.value, raw.hex()),
            reason=rejection.reason,
            field=rejection.field,
            message=rejection.message,
            # Bounded, so that a dead letter always fits in a Kafka message even when the
            # record it stands for only just did (base64 adds a third).
            raw=base64.b64encode(raw[:MAX_KEPT_BYTES]).decode("ascii"),
            raw_size=len(raw),
            raw_truncated=len(raw) > MAX_KEPT_BYTES,
            source=source,
        )

    def original_bytes(self) -> bytes:
        return base64.b64decode(self.raw)
