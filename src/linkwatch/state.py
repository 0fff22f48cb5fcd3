"""Per-user journey state: small immutable tuples, and their compact wire form.

The engine never mutates a state it is given; it returns a new one. States are stored per user
(a dict offline, a Faust table live), so the wire form is compact JSON arrays, not objects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple

import orjson

from linkwatch.codec import validate_event
from linkwatch.events import Event
from linkwatch.profile import Profile
from linkwatch.suppression import EMPTY_DELIVERY, Delivery, Held
from linkwatch.triggers import Trigger

WIRE_VERSION: Final = 4
# Version 3 (no profile) still loads, as a user without a profile.
_READABLE: Final = frozenset({3, WIRE_VERSION})


class Context(NamedTuple):
    """Where the user was at the last step reached (copied into triggers)."""

    channel: str | None = None
    campaign_id: str | None = None
    content_id: str | None = None
    link_id: str | None = None
    url: str | None = None
    page: str | None = None
    session_id: str | None = None
    ref_share_id: str | None = None
    landing_status: int | None = None

    @classmethod
    def of(cls, event: Event) -> Context:
        return cls(
            event.channel,
            event.campaign_id,
            event.content_id,
            getattr(event, "link_id", None),
            getattr(event, "url", None),
            getattr(event, "page", None),
            event.session_id,
            getattr(event, "ref_share_id", None),
            getattr(event, "landing_status", None),
        )


class Instance(NamedTuple):
    """One user's active run through one journey."""

    step: int  # index of the last step reached
    started_by: str  # event_id of the event that started the instance
    reached_at: int  # event time (ms) the last step was reached
    deadline: int  # event time (ms) by which the next step must be reached
    context: Context


class Awaiting(NamedTuple):
    """A drop-off whose user may still come back (until `expires`): then it is resolved."""

    trigger_id: str
    missed: int  # index of the missed step
    deadline: int  # event time (ms) the budget ran out
    expires: int  # event time (ms) the recovery window ends


class UserState(NamedTuple):
    instances: Mapping[str, Instance]  # journey name → active instance; never mutated in place
    pending: tuple[Event, ...]  # accepted but not yet applied, sorted by (ts, event_id)
    recent: tuple[int, ...]  # 64-bit hashes of the most recent event_ids (de-duplication)
    last_seen: int  # newest event time seen for this user (ms)
    awaiting: Mapping[str, Awaiting] = MappingProxyType({})  # journey → last drop-off
    delivery: Delivery = EMPTY_DELIVERY  # what suppression remembers: sent, cooldowns, held
    profile: Profile | None = None  # retention, fake traffic, signals (see profile.py)


def has_work(state: UserState) -> bool:
    """Something is still due for this user (an instance, a buffered event, a drop-off that
    may be resolved, a held trigger, a profile with its deadlines and expiry): their wake-ups
    are exact. Otherwise they are idle."""
    return bool(
        state.instances
        or state.pending
        or state.awaiting
        or state.delivery.held
        or state.profile is not None
    )


EMPTY_INSTANCES: Final[Mapping[str, Instance]] = MappingProxyType({})
EMPTY_AWAITING: Final[Mapping[str, Awaiting]] = MappingProxyType({})


def event_id_hash(event_id: str) -> int:
    """Stable across processes (unlike hash()), so persisted de-dup memory survives restarts."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big")


def event_order(event: Event) -> tuple[int, str]:
    """The order events are applied in: event time, then event_id to break ties."""
    return (event.ts, event.event_id)


def dump_state(state: UserState, partition: int = -1) -> bytes:
    """Compact wire form: [version, partition, instances, pending, recent, last_seen, awaiting,
    delivery, profile].

    The partition is stored so that, after a rebalance, recovered states can be grouped by
    partition without assuming how producers partitioned their keys."""
    return orjson.dumps(
        [
            WIRE_VERSION,
            partition,
            {
                name: [i.step, i.started_by, i.reached_at, i.deadline, list(i.context)]
                for name, i in state.instances.items()
            },
            [
                e.model_dump(mode="json", exclude_defaults=True) | {"kind": e.kind}
                for e in state.pending
            ],
            list(state.recent),
            state.last_seen,
            {name: list(a) for name, a in state.awaiting.items()},
            _dump_delivery(state.delivery),
            _dump_profile(state.profile),
        ]
    )


def _dump_profile(profile: Profile | None) -> list[Any] | None:
    return None if profile is None else list(profile)


def _load_profile(data: list[Any] | None) -> Profile | None:
    if data is None:
        return None
    first_seen, acquired_by, channel, via_share, retained, last_active, last_event, *rest = data
    reminded, group, clicks, flagged_until = rest
    return Profile(
        first_seen,
        acquired_by,
        channel,
        via_share,
        retained,
        last_active,
        last_event,
        reminded,
        None if group is None else (group[0], group[1]),
        tuple(clicks),
        flagged_until,
    )


def _dump_delivery(delivery: Delivery) -> list[Any] | None:
    if delivery == EMPTY_DELIVERY:
        return None
    return [
        list(delivery.sent),
        dict(delivery.cooldowns),
        [[h.release_at, h.trigger.model_dump(mode="json")] for h in delivery.held],
        delivery.tz,
        {journey: list(entry) for journey, entry in delivery.withheld.items()},
    ]


def _load_delivery(data: list[Any] | None) -> Delivery:
    if data is None:
        return EMPTY_DELIVERY
    sent, cooldowns, held, tz, withheld = data
    return Delivery(
        tuple(sent),
        cooldowns,
        tuple(Held(release_at, Trigger.model_validate(t)) for release_at, t in held),
        tz,
        {journey: (entry[0], entry[1]) for journey, entry in withheld.items()},
    )


def load_state(raw: bytes) -> tuple[int, UserState]:
    """(partition, state) from `dump_state` output."""
    data: list[Any] = orjson.loads(raw)
    if not isinstance(data, list) or not data or data[0] not in _READABLE:
        raise ValueError(f"unsupported state wire format: {raw[:40]!r}")
    _, partition, instances, pending, recent, last_seen, awaiting, delivery, *profile = data
    return partition, UserState(
        instances={
            name: Instance(step, started_by, reached_at, deadline, Context(*context))
            for name, (step, started_by, reached_at, deadline, context) in instances.items()
        },
        pending=tuple(validate_event(item) for item in pending),
        recent=tuple(recent),
        last_seen=last_seen,
        awaiting={name: Awaiting(*entry) for name, entry in awaiting.items()},
        delivery=_load_delivery(delivery),
        profile=_load_profile(profile[0]) if profile else None,
    )
