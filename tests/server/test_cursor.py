"""PURE: the per-connection StreamCursor's deliver / duplicate / backfill decisions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orders.cursor import Action, Decision, StreamCursor


def test_the_next_seq_is_delivered() -> None:
    cursor = StreamCursor(0)
    assert cursor.offer(1) == Decision(Action.DELIVER)
    cursor.advance(1)
    assert cursor.last == 1
    assert cursor.offer(2).action is Action.DELIVER


@pytest.mark.parametrize("seq", [0, 1, 5, 6, 7])
def test_a_seq_at_or_before_the_cursor_is_a_duplicate(seq: int) -> None:
    cursor = StreamCursor(7)
    assert cursor.offer(seq) == Decision(Action.DUPLICATE)


@pytest.mark.parametrize(
    ("last", "seq", "missing"),
    [(0, 2, (1, 1)), (0, 10, (1, 9)), (5, 7, (6, 6)), (5, 100, (6, 99))],
)
def test_a_seq_past_a_gap_asks_for_exactly_the_missing_range(
    last: int, seq: int, missing: tuple[int, int]
) -> None:
    decision = StreamCursor(last).offer(seq)
    assert decision.action is Action.BACKFILL
    assert (decision.missing_from, decision.missing_to) == missing


def test_offering_does_not_move_the_cursor() -> None:
    cursor = StreamCursor(3)
    for seq in [1, 4, 9]:
        cursor.offer(seq)
    assert cursor.last == 3


@pytest.mark.parametrize("seq", [0, 1, 2, 4, 5, -1])
def test_the_cursor_advances_only_by_exactly_one(seq: int) -> None:
    cursor = StreamCursor(2)
    with pytest.raises(ValueError, match="cannot advance"):
        cursor.advance(seq)
    assert cursor.last == 2


@pytest.mark.parametrize("start", [-1, -100])
def test_a_negative_start_is_rejected(start: int) -> None:
    with pytest.raises(ValueError, match="negative"):
        StreamCursor(start)


@pytest.mark.parametrize(("last", "head"), [(7, 3), (3, 7), (5, 0), (0, 0)])
def test_a_restarted_cursor_owes_exactly_what_comes_after_the_new_position(
    last: int, head: int
) -> None:
    # After a reset the client holds a snapshot at ``head``, which may be behind the old
    # position (the log went back) as well as ahead of it.
    cursor = StreamCursor(last)
    cursor.restart(head)
    assert cursor.last == head
    assert cursor.offer(head) == Decision(Action.DUPLICATE)
    assert cursor.offer(head + 1) == Decision(Action.DELIVER)
    assert cursor.offer(head + 3) == Decision(Action.BACKFILL, head + 1, head + 2)
    cursor.advance(head + 1)
    assert cursor.last == head + 1


@pytest.mark.parametrize("head", [-1, -100])
def test_a_negative_restart_is_rejected_and_the_cursor_stays_put(head: int) -> None:
    cursor = StreamCursor(4)
    with pytest.raises(ValueError, match="negative"):
        cursor.restart(head)
    assert cursor.last == 4


def test_behind_says_whether_the_head_is_past_the_cursor() -> None:
    cursor = StreamCursor(4)
    assert cursor.behind(5)
    assert not cursor.behind(4)
    assert not cursor.behind(0)


def _deliver_all(cursor: StreamCursor, arrivals: list[int], log: list[int]) -> list[int]:
    """What a client sees when ``arrivals`` come live and gaps are read back from ``log``."""
    delivered: list[int] = []
    for seq in arrivals:
        decision = cursor.offer(seq)
        if decision.action is Action.BACKFILL:
            # The hub reads the gap from the database (the log holds every committed seq).
            for missing in range(decision.missing_from, decision.missing_to + 1):
                assert missing in log
                cursor.advance(missing)
                delivered.append(missing)
            decision = cursor.offer(seq)
        if decision.action is Action.DELIVER:
            cursor.advance(seq)
            delivered.append(seq)
        else:
            assert decision.action is Action.DUPLICATE
    return delivered


@given(
    data=st.data(),
    n=st.integers(min_value=1, max_value=60),
)
def test_any_permutation_with_duplicates_is_delivered_exactly_once_in_order(
    data: st.DataObject, n: int
) -> None:
    seqs = list(range(1, n + 1))
    extra = data.draw(st.lists(st.sampled_from(seqs), max_size=2 * n), label="duplicates")
    arrivals = data.draw(st.permutations(seqs + extra), label="arrivals")
    assert _deliver_all(StreamCursor(0), arrivals, seqs) == seqs


@given(
    data=st.data(),
    start=st.integers(min_value=0, max_value=1_000),
    n=st.integers(min_value=1, max_value=40),
)
def test_a_resumed_cursor_delivers_only_what_comes_after_it(
    data: st.DataObject, start: int, n: int
) -> None:
    old = list(range(1, start + 1))
    new = list(range(start + 1, start + n + 1))
    replayed = data.draw(st.lists(st.sampled_from(old), max_size=10) if old else st.just([]))
    arrivals = data.draw(st.permutations(new + replayed))
    assert _deliver_all(StreamCursor(start), arrivals, old + new) == new
