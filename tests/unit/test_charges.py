"""FOCUS rows: every column in spec order, ids that depend only on causes."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from ledger.accounts import Account, Rules, apply
from ledger.charges import (
    COLUMNS,
    FOCUS_COLUMNS,
    ChargeKind,
    charge_id,
    focus_row,
    name_uuid,
    row_text,
)
from tests.factories import event, purchase_doc, spec_prices, usage_doc


def test_there_are_57_focus_columns_in_spec_order_then_custom_ones() -> None:
    assert len(FOCUS_COLUMNS) == 57
    assert list(FOCUS_COLUMNS) == sorted(FOCUS_COLUMNS)
    custom = COLUMNS[len(FOCUS_COLUMNS) :]
    assert custom and all(name.startswith("x_") for name in custom)


def test_rows_render_every_column_with_focus_text() -> None:
    prices = spec_prices()
    account = Account("a")
    apply(
        account,
        event(purchase_doc("p", "2025-04-01T00:00:00Z", "a", "3", "1")),
        prices,
        Rules(),
    )
    outcome = apply(
        account,
        event(
            usage_doc(
                "u",
                "2025-04-01T10:15:00Z",
                "a",
                "SKU-762343",
                "1",
                tags={"b": "2", "a": "1"},
            )
        ),
        prices,
        Rules(),
    )

    row = row_text(focus_row(outcome.entries[0].charge))  # type: ignore[arg-type]

    assert list(row) == list(COLUMNS)
    assert row["EffectiveCost"] == "0.333333333333"
    assert row["BilledCost"] == "0.00"
    assert row["ChargePeriodStart"] == "2025-04-01T10:00:00Z"
    assert list(row["Tags"]) == ["a", "b"]
    assert row["CommitmentDiscountStatus"] is None


def test_charge_ids_are_stable_and_distinct_per_cause() -> None:
    first = charge_id(ChargeKind.USAGE, "src", "u", "lot-1")

    assert first == charge_id(ChargeKind.USAGE, "src", "u", "lot-1")
    assert first != charge_id(ChargeKind.USAGE, "src", "u", "lot-2")
    assert first != charge_id(ChargeKind.SETTLEMENT, "src", "u", "lot-1")


@given(st.text(max_size=200))
def test_name_uuids_are_uuid5(name: str) -> None:
    namespace = uuid.UUID("6f1d2b0e-6c4a-5d8e-9b7a-3c2f1e0d4b5a")

    assert name_uuid(namespace, name) == str(uuid.uuid5(namespace, name))
