"""PURE, exhaustive: every (status, mover, target) cell of the order workflow.

The expected table is written out here by hand from DESIGN.md §4, not derived from
``orders.workflow.TRANSITIONS``, so a change to the table must be made in both places on purpose.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orders.workflow import (
    RANK,
    TERMINAL,
    Mover,
    OrderStatus,
    PaymentMethod,
    allowed_next,
    can_move,
    initial_status,
    is_open,
    parse_status,
)

STATUS_NAMES = [
    "PENDING_PAYMENT",
    "CONFIRMED",
    "PREPARING",
    "READY",
    "OUT_FOR_DELIVERY",
    "DELIVERED",
    "CANCELLED",
    "EXPIRED",
]
MOVER_NAMES = ["customer", "pos", "system"]

#: (from, to) -> who may make the move; every pair absent here is forbidden for everyone.
EXPECTED: dict[tuple[str, str], set[str]] = {
    ("PENDING_PAYMENT", "CONFIRMED"): {"pos", "system"},
    ("PENDING_PAYMENT", "CANCELLED"): {"customer", "pos", "system"},
    ("PENDING_PAYMENT", "EXPIRED"): {"system"},
    ("CONFIRMED", "PREPARING"): {"pos", "system"},
    ("CONFIRMED", "CANCELLED"): {"customer", "pos", "system"},
    ("PREPARING", "READY"): {"pos", "system"},
    ("PREPARING", "CANCELLED"): {"pos", "system"},
    ("READY", "OUT_FOR_DELIVERY"): {"pos", "system"},
    ("READY", "DELIVERED"): {"pos", "system"},
    ("READY", "CANCELLED"): {"pos", "system"},
    ("OUT_FOR_DELIVERY", "DELIVERED"): {"pos", "system"},
}

#: (status, mover) -> the exact list allowed_next must return, in workflow order.
EXPECTED_NEXT: dict[tuple[str, str], list[str]] = {
    ("PENDING_PAYMENT", "customer"): ["CANCELLED"],
    ("PENDING_PAYMENT", "pos"): ["CONFIRMED", "CANCELLED"],
    ("PENDING_PAYMENT", "system"): ["CONFIRMED", "CANCELLED", "EXPIRED"],
    ("CONFIRMED", "customer"): ["CANCELLED"],
    ("CONFIRMED", "pos"): ["PREPARING", "CANCELLED"],
    ("CONFIRMED", "system"): ["PREPARING", "CANCELLED"],
    ("PREPARING", "customer"): [],
    ("PREPARING", "pos"): ["READY", "CANCELLED"],
    ("PREPARING", "system"): ["READY", "CANCELLED"],
    ("READY", "customer"): [],
    ("READY", "pos"): ["OUT_FOR_DELIVERY", "DELIVERED", "CANCELLED"],
    ("READY", "system"): ["OUT_FOR_DELIVERY", "DELIVERED", "CANCELLED"],
    ("OUT_FOR_DELIVERY", "customer"): [],
    ("OUT_FOR_DELIVERY", "pos"): ["DELIVERED"],
    ("OUT_FOR_DELIVERY", "system"): ["DELIVERED"],
    ("DELIVERED", "customer"): [],
    ("DELIVERED", "pos"): [],
    ("DELIVERED", "system"): [],
    ("CANCELLED", "customer"): [],
    ("CANCELLED", "pos"): [],
    ("CANCELLED", "system"): [],
    ("EXPIRED", "customer"): [],
    ("EXPIRED", "pos"): [],
    ("EXPIRED", "system"): [],
}

CELLS = list(itertools.product(STATUS_NAMES, MOVER_NAMES, STATUS_NAMES))


def test_the_statuses_and_movers_are_exactly_the_documented_ones() -> None:
    assert [s.value for s in OrderStatus] == STATUS_NAMES
    assert sorted(m.value for m in Mover) == sorted(MOVER_NAMES)
    assert {s.value for s in TERMINAL} == {"DELIVERED", "CANCELLED", "EXPIRED"}


@pytest.mark.parametrize(("status", "mover", "target"), CELLS)
def test_every_cell_of_the_workflow_matches_the_expected_table(
    status: str, mover: str, target: str
) -> None:
    expected = mover in EXPECTED.get((status, target), set())
    assert can_move(OrderStatus(status), OrderStatus(target), Mover(mover)) is expected


@pytest.mark.parametrize(("status", "mover"), sorted(EXPECTED_NEXT))
def test_allowed_next_lists_exactly_the_allowed_targets_in_workflow_order(
    status: str, mover: str
) -> None:
    got = allowed_next(OrderStatus(status), Mover(mover))
    assert [s.value for s in got] == EXPECTED_NEXT[(status, mover)]


def test_allowed_next_agrees_with_can_move_on_every_cell() -> None:
    for status, mover in itertools.product(OrderStatus, Mover):
        allowed = set(allowed_next(status, mover))
        assert allowed == {t for t in OrderStatus if can_move(status, t, mover)}


def test_the_expected_next_table_covers_every_status_and_mover() -> None:
    assert set(EXPECTED_NEXT) == set(itertools.product(STATUS_NAMES, MOVER_NAMES))


@pytest.mark.parametrize("status", ["DELIVERED", "CANCELLED", "EXPIRED"])
def test_a_terminal_status_has_no_exit_for_anyone(status: str) -> None:
    terminal = OrderStatus(status)
    assert not is_open(terminal)
    for mover, target in itertools.product(Mover, OrderStatus):
        assert not can_move(terminal, target, mover)
        assert allowed_next(terminal, mover) == []


@pytest.mark.parametrize(
    "status", ["PENDING_PAYMENT", "CONFIRMED", "PREPARING", "READY", "OUT_FOR_DELIVERY"]
)
def test_an_open_status_is_open_and_the_system_can_leave_it(status: str) -> None:
    assert is_open(OrderStatus(status))
    assert allowed_next(OrderStatus(status), Mover.SYSTEM) != []


def test_no_status_may_move_to_itself() -> None:
    for status, mover in itertools.product(OrderStatus, Mover):
        assert not can_move(status, status, mover)


def test_online_orders_start_waiting_for_payment_and_cash_orders_start_confirmed() -> None:
    assert initial_status(PaymentMethod.ONLINE) is OrderStatus.PENDING_PAYMENT
    assert initial_status(PaymentMethod.CASH) is OrderStatus.CONFIRMED


@pytest.mark.parametrize("name", STATUS_NAMES)
def test_parse_status_reads_every_status_name(name: str) -> None:
    assert parse_status(name) is OrderStatus(name)


@pytest.mark.parametrize(
    "junk",
    [
        "",
        " ",
        "preparing",
        "Preparing",
        " PREPARING",
        "PREPARING ",
        "SHIPPED",
        "PENDING-PAYMENT",
        "null",
        None,
        0,
        1,
        1.5,
        True,
        [],
        ["READY"],
        {"status": "READY"},
        b"READY",
        OrderStatus,
    ],
)
def test_parse_status_returns_none_for_anything_that_is_not_a_status_name(junk: object) -> None:
    assert parse_status(junk) is None


moves = st.lists(
    st.tuples(st.sampled_from(list(Mover)), st.sampled_from(list(OrderStatus))), max_size=40
)


@given(start=st.sampled_from(list(OrderStatus)), attempts=moves)
def test_any_sequence_of_attempted_moves_never_goes_backwards_or_leaves_a_terminal_status(
    start: OrderStatus, attempts: list[tuple[Mover, OrderStatus]]
) -> None:
    status = start
    for mover, target in attempts:
        if not can_move(status, target, mover):
            continue
        assert status not in TERMINAL, f"{mover} moved a {status} order to {target}"
        assert RANK[target] > RANK[status], f"{status} -> {target} goes backwards"
        status = target
    if start in TERMINAL:
        assert status is start


@given(attempts=moves)
def test_a_new_order_walks_only_along_the_documented_table(
    attempts: list[tuple[Mover, OrderStatus]],
) -> None:
    for method in PaymentMethod:
        status = initial_status(method)
        for mover, target in attempts:
            if can_move(status, target, mover):
                assert mover.value in EXPECTED[(status.value, target.value)]
                status = target
