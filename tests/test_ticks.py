"""One tick in flight per partition: ticks go at the pace the broker returns them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from linkwatch.ticks import TickPacer


def test_a_partition_gets_its_next_tick_once_the_last_was_read() -> None:
    pacer = TickPacer(resend_after_ms=30_000)
    assert pacer.due({2, 0, 1}, now_ms=0) == [0, 1, 2]
    assert pacer.due({0, 1, 2}, now_ms=250) == []  # none read back yet: none sent
    pacer.read(1)
    assert pacer.due({0, 1, 2}, now_ms=500) == [1]
    assert pacer.in_flight == 3


def test_a_tick_that_failed_to_send_is_sent_again_at_the_next_timer() -> None:
    pacer = TickPacer(resend_after_ms=30_000)
    pacer.due({0}, now_ms=0)
    pacer.failed(0)
    assert pacer.due({0}, now_ms=250) == [0]


def test_a_tick_unread_for_the_resend_time_is_taken_for_lost() -> None:
    pacer = TickPacer(resend_after_ms=30_000)
    pacer.due({0, 1}, now_ms=0)
    pacer.read(1)
    assert pacer.due({0, 1}, now_ms=29_999) == [1]
    assert pacer.due({0, 1}, now_ms=30_000) == [0]  # 1 was sent again at 29,999


def test_revoked_partitions_are_forgotten_and_new_ones_ticked_at_once() -> None:
    pacer = TickPacer(resend_after_ms=30_000)
    pacer.due({0, 1}, now_ms=0)
    pacer.forget({0, 1})
    assert pacer.in_flight == 0
    assert pacer.due({0, 3}, now_ms=1) == [0, 3]


@given(
    st.lists(
        st.tuples(st.sampled_from(["timer", "read", "fail"]), st.integers(0, 3)),
        max_size=200,
    )
)
def test_never_more_than_one_tick_in_flight_per_partition_between_resends(
    steps: list[tuple[str, int]],
) -> None:
    """However reads and failures interleave with the timer, a partition gets a tick only
    when none of its own is in flight, until the resend time passes."""
    pacer = TickPacer(resend_after_ms=1_000_000)
    in_flight: set[int] = set()
    for now, (step, partition) in enumerate(steps):
        if step == "timer":
            sent = pacer.due(range(4), now_ms=now)
            assert not set(sent) & in_flight
            assert set(sent) == set(range(4)) - in_flight  # and every idle one gets one
            in_flight |= set(sent)
        elif step == "read":
            pacer.read(partition)
            in_flight.discard(partition)
        else:
            pacer.failed(partition)
            in_flight.discard(partition)
        assert pacer.in_flight == len(in_flight)
