"""The event document: what every reader of a stream gets for one change."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from orders.documents import EventRow, event_payload


def row(kind: str, data: dict[str, Any]) -> EventRow:
    return EventRow(
        id=7,
        order_id="ord_1",
        kind=kind,
        from_status="PENDING",
        to_status="SUCCEEDED",
        source="gateway",
        actor="system",
        data=data,
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
    )


@pytest.mark.parametrize("subject", ["payment", "refund", "receipt"])
def test_an_event_carries_the_record_it_is_about_and_no_other(subject: str) -> None:
    record = {"id": "x_1", "amount": 4000, "currency": "INR", "reason": "cold coffee"}
    payload = event_payload("customer:c", 3, row(f"{subject}.status", {subject: record}))
    assert payload[subject] == record
    assert {"payment", "refund", "receipt"} & payload.keys() == {subject}
    assert (payload["stream"], payload["seq"], payload["event_id"]) == ("customer:c", 3, 7)


def test_an_order_change_carries_no_money_record_and_its_note_only_when_there_is_one() -> None:
    payload = event_payload("store:s", 1, row("order.status", {"order": {"id": "ord_1"}}))
    assert {"payment", "refund", "receipt", "note"} & payload.keys() == set()
    noted = event_payload("store:s", 1, row("order.status", {"note": "two minutes"}))
    assert noted["note"] == "two minutes"
