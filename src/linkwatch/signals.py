"""Signals: facts about things other than one user (links, campaigns, groups, shares, sharers),
and the contract of the pure logic that aggregates them.

Stage 1 (the journey engine) is keyed by user. What a growth team asks about links, groups and
shares spans many users, so stage 1 emits *signals* addressed to an entity ("link:L",
"group:G", "share:S", "user:U") and an *entity stage* aggregates them, keyed by entity. Offline
both stages run in one process; live, signals travel over an internal topic keyed by entity.

Determinism is the same as in stage 1: a signal is applied only once the entity stage's
watermark has passed its event time, in (ts, signal_id) order per entity, and time-driven work
(closing a window, noticing silence) happens at event times the logic chooses, never at the
moment a watermark happens to jump. So the outputs depend only on which signals exist, not on
how they were partitioned, batched or interleaved.

Levels make the entity stage a DAG: a signal at level k may only cause signals at levels > k,
and level k's watermark never passes level k-1's. Level 2 holds the entities stage 1 feeds
(links, campaigns, groups, shares); higher levels hold what is derived from them (credit
flowing up a referral chain, one level per hop, and sharer profiles last).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final, Literal, NamedTuple, Protocol

from pydantic import BaseModel

# The level stage 1 feeds. Higher levels are derived (see fission and tiers).
ENTITY_LEVEL: Final = 2


class Signal(NamedTuple):
    level: int  # which level of the entity stage handles it (>= ENTITY_LEVEL)
    entity: str  # "<prefix>:<id>", e.g. "link:L1"; the prefix picks the logic
    kind: str  # what happened, in the vocabulary of the logic that owns the prefix
    ts: int  # event time (ms) of the fact
    signal_id: str  # deterministic and unique per fact: redeliveries are recognised
    data: Mapping[str, Any]  # small JSON-safe payload (str, int, float, bool, None)


def member_hash(user_id: str) -> str:
    """A stable pseudonym for a user inside aggregates (distinct counts need identity, not
    the id itself)."""
    return hashlib.blake2b(user_id.encode(), digest_size=8).hexdigest()


def signal(
    level: int, entity: str, kind: str, ts: int, data: Mapping[str, Any], *why: str
) -> Signal:
    """A signal whose id derives from the entity, the kind and what caused it (`why`). Ids are
    never published, so they are length-prefixed strings, not hashes (cheaper)."""
    signal_id = f"{len(entity)}:{entity}{len(kind)}:{kind}"
    for part in why:  # a loop, not a generator into join: one signal per applied event
        signal_id += f"{len(part)}:{part}"
    return Signal(level, entity, kind, ts, signal_id, data)


class Published(NamedTuple):
    """A record for an output topic: link and community alerts on the health topic, tier
    changes on the profiles topic. `key` is the Kafka key (the entity's id)."""

    topic: Literal["health", "profiles"]
    key: str
    record: BaseModel


class Measure(NamedTuple):
    """A metric change computed by entity logic: `amount` added to the named counter or gauge
    (gauges may go down). Labels are bounded values, never a user id."""

    name: str
    labels: tuple[str, ...]
    amount: float


class MetricSpec(NamedTuple):
    """A metric an entity logic module emits `Measure`s for; the shell registers it."""

    name: str  # Prometheus name without the linkwatch_ prefix
    help: str
    labels: tuple[str, ...]
    type: Literal["counter", "gauge"]


EntityOutput = Signal | Published | Measure


class EntityStep(NamedTuple):
    state: Any | None  # None: nothing left worth keeping for this entity
    outputs: list[EntityOutput]


class EntityLogic(Protocol):
    """Pure aggregation for the entities of some prefixes. Stateless itself: the entity's state
    is passed in and a new one returned (never mutate the one given).

    The entity stage calls, for one entity, in event-time order:
      - `apply(entity, state, signal)` for each signal, in (ts, signal_id) order;
      - `wake(entity, state, at)` when the watermark reaches `at = next_wake(state)`, after every
        signal with ts < at and before any signal with ts >= at.
    `next_wake` of a returned state must be later than the time just handled (the signal's
    ts, or `at`): time never runs backwards. Every state kept has a next wake (at the latest,
    when it is to be forgotten: `wake` then returns state None), so no entity lives forever.
    The state must round-trip through `dump`/`load` (JSON-safe), since live it is persisted."""

    prefixes: tuple[str, ...]

    def apply(self, entity: str, state: Any | None, signal: Signal) -> EntityStep: ...

    def wake(self, entity: str, state: Any, at: int) -> EntityStep: ...

    def next_wake(self, state: Any) -> int: ...

    def dump(self, state: Any) -> Any: ...

    def load(self, data: Any) -> Any: ...
