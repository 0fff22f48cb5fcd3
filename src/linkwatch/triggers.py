"""Re-engagement triggers: the records notification services consume.

A trigger's id is a hash of the inputs that caused it, never of when or where it was
computed, so a replay, a restart or a redelivery reproduces the same id and consumers can
de-duplicate on it.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field


class Cause(StrEnum):
    """Why a user dropped off (DOMAIN.md, in the order a buyer meets them), plus the causes
    of the other trigger types (each named like its type)."""

    UNFAMILIAR = "unfamiliar"
    NOT_UNDERSTOOD = "not_understood"
    INDIFFERENT = "indifferent"
    DISTRUST = "distrust"
    DISTRACTED = "distracted"
    DEAD_END = "dead_end"
    NOT_RETAINED = "not_retained"  # acquired on a public channel, never joined the brand's pool
    DORMANT = "dormant"  # retained, then silent


# The causes a journey step may name; the others belong to their own trigger types.
DROPOFF_CAUSES: Final = tuple(
    c for c in Cause if c not in (Cause.DEAD_END, Cause.NOT_RETAINED, Cause.DORMANT)
)

# Default remedy hints; a journey step may override its own.
REMEDIES: Final[dict[Cause, str]] = {
    Cause.UNFAMILIAR: "brand/intro content",
    Cause.NOT_UNDERSTOOD: "explainer, use-case content",
    Cause.INDIFFERENT: "offer, coupon, social proof",
    Cause.DISTRUST: "reviews, guarantees, KOC testimony",
    Cause.DISTRACTED: "plain reminder, one-click resume",
    Cause.DEAD_END: "fix the link; resend a working link",
    Cause.NOT_RETAINED: "invite into the brand's own pool: group chat, official account",
    Cause.DORMANT: "re-reach: what is new, a come-back offer",
}

# dropoff: a journey broke (see `journey`, `last_step`, `missed_step`); dead_end: a landing
# failed; not_retained / dormant: the retention loop (see profile.py): no journey or steps,
# `deadline` = `event_time` = when it fell due, `last_step_at` = the user's last activity,
# `started_by` = the event that set the deadline, `context` = where the user was acquired
# (channel, ref_share_id).
TriggerType = Literal["dropoff", "dead_end", "not_retained", "dormant"]
_DATE_TIME: Final[dict[str, Any]] = {"format": "date-time"}


class TriggerContext(BaseModel):
    """Where the user was when the journey broke: enough for a sender to pick a message."""

    model_config = ConfigDict(frozen=True)

    channel: str | None = None
    campaign_id: str | None = None
    content_id: str | None = None
    link_id: str | None = None
    url: str | None = None
    page: str | None = None
    session_id: str | None = None
    ref_share_id: str | None = Field(
        default=None, description="The share the user came through, if any"
    )
    landing_status: int | None = None


class Trigger(BaseModel):
    """A re-engagement trigger. Consumers de-duplicate on `trigger_id`."""

    model_config = ConfigDict(frozen=True)

    trigger_id: str = Field(description="Deterministic: the same input always gives the same id")
    type: TriggerType
    journey: str | None = Field(description="Journey name; null for the other types")
    user_id: str
    last_step: str | None = Field(description="Last step the user reached")
    missed_step: str | None = Field(description="The step the user did not reach")
    cause: Cause
    remedy: str
    event_time: str = Field(
        description="Event time of the breakpoint (RFC 3339, UTC)", json_schema_extra=_DATE_TIME
    )
    deadline: str | None = Field(
        description="When the budget ran out (drop-off) or the retention deadline fell due",
        json_schema_extra=_DATE_TIME,
    )
    last_step_at: str | None = Field(
        description="Event time the last step was reached (retention: the last activity)",
        json_schema_extra=_DATE_TIME,
    )
    started_by: str = Field(
        description="event_id of the event that started the instance (retention: that set "
        "the deadline)"
    )
    context: TriggerContext


class Resolution(BaseModel):
    """A user who dropped off came back and reached the missed step (or went further) within
    the recovery window: senders can cancel what they queued for `trigger_id`."""

    model_config = ConfigDict(frozen=True)

    resolution_id: str = Field(description="Deterministic: derived from the trigger it resolves")
    type: Literal["resolution"] = "resolution"
    trigger_id: str = Field(description="The drop-off trigger this resolves")
    journey: str
    user_id: str
    missed_step: str
    reached_step: str = Field(description="The step the user reached on coming back")
    cause: Cause = Field(description="The drop-off's cause (for recovery rates by cause)")
    event_time: str = Field(
        description="Event time the user came back (RFC 3339, UTC)", json_schema_extra=_DATE_TIME
    )
    resolved_by: str = Field(description="event_id of the event that resolved it")
    recovered_after_s: float = Field(description="Seconds from the drop-off's deadline")


# What the triggers topic carries: triggers, and resolutions of earlier drop-offs.
TopicRecord = Trigger | Resolution


def derive_id(*parts: str) -> str:
    """A 128-bit hex id from its inputs. Parts are length-prefixed so no two tuples collide."""
    # One buffer hashed at once: the same digest as feeding the parts one by one, with far
    # fewer calls (ids are derived for every trigger and record).
    chunks: list[bytes] = []
    for part in parts:
        encoded = part.encode()
        chunks.append(len(encoded).to_bytes(4, "big"))
        chunks.append(encoded)
    return hashlib.blake2b(b"".join(chunks), digest_size=16).hexdigest()
