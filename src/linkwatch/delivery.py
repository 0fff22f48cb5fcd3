"""Delivering records until the broker has them.

A delivery can fail: the broker is down longer than the producer waits, a request times out,
a partition's leader moves. Raising that into the stream would crash the agent with the
record half handled; dropping it would lose a trigger. So a failed record is sent again,
with backoff, until it is acknowledged, and only then does the caller go on to write the
state that produced it. A record retried after a timeout may land twice: every record has
an id derived from its input, so a duplicate is recognisable as one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

log = logging.getLogger("linkwatch.delivery")

Send = Callable[..., Awaitable[Any]]  # a Faust topic's `send`: returns a delivery future

FIRST_BACKOFF: Final = 0.5  # seconds before the first re-send
MAX_BACKOFF: Final = 10.0


async def deliver_all(
    send: Send,
    messages: Sequence[dict[str, Any]],
    *,
    on_retry: Callable[[int], None] = lambda _: None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> None:
    """Send every message (`send`'s keyword arguments) and return once each one has been
    acknowledged, re-sending the failed ones until they are. `on_retry` is told how many
    are about to be sent again."""
    todo = list(messages)
    backoff = FIRST_BACKOFF
    while todo:
        # Sent in order (the broker keeps a partition's records in the order sent), then
        # awaited: the sends overlap in the producer's batches.
        sent: list[Any] = []
        for message in todo:
            try:
                sent.append(await send(**message))
            except Exception as exc:  # e.g. the producer cannot reach the broker yet
                sent.append(exc)
        failed = []
        for message, outcome in zip(todo, sent, strict=True):
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                await outcome
            except Exception as exc:  # CancelledError is not one: it goes through
                failed.append((message, exc))
        if not failed:
            return
        first = failed[0][1]
        log.warning(
            "%d of %d records to %s not delivered (%s: %s); sending them again in %.1f s",
            len(failed),
            len(todo),
            _topic_of(send),
            type(first).__name__,
            first,
            backoff,
        )
        on_retry(len(failed))
        await sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)
        todo = [message for message, _ in failed]


def _topic_of(send: Send) -> str:
    topic = getattr(send, "__self__", None)
    name = getattr(topic, "get_topic_name", None)
    try:
        return str(name()) if callable(name) else "its topic"
    except Exception:  # a topic with several names: the count is what matters
        return "its topic"
