"""Cost basis conservation: a lot's draws always add up to what was paid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import InvariantError
from ledger.lots import Lot, LotStatus, check_conservation, close, draw, take
from ledger.prices import DrawOrder

T0 = datetime(2025, 4, 1, tzinfo=UTC)


def lot(quantity: str, amount: str, **kwargs: object) -> Lot:
    values: dict[str, object] = {
        "lot_id": "lot",
        "account_id": "a",
        "currency": "TKN",
        "billing_currency": "USD",
        "purchased_at": T0,
        "purchase_id": "p",
        "purchase_source": "s",
        "expires_at": None,
        "quantity": Decimal(quantity),
        "amount": Decimal(amount),
        "remaining_quantity": Decimal(quantity),
        "remaining_basis": Decimal(amount),
        "refunded_amount": Decimal(0),
        "invoice_id": "i",
        "sub_account_id": None,
        "sub_account_name": None,
        "sub_account_type": None,
    }
    values.update(kwargs)
    return Lot(**values)  # type: ignore[arg-type]


quantities = st.decimals(
    min_value=Decimal("0.000001"),
    max_value=Decimal(10**9),
    places=6,
    allow_nan=False,
    allow_infinity=False,
)
amounts = st.decimals(
    min_value=Decimal(0),
    max_value=Decimal(10**7),
    places=2,
    allow_nan=False,
    allow_infinity=False,
)


@settings(max_examples=300, deadline=None)
@given(
    quantity=quantities,
    amount=amounts,
    fractions=st.lists(st.integers(min_value=1, max_value=10_000), max_size=40),
)
def test_draws_then_expiry_add_up_to_the_amount_paid(
    quantity: Decimal, amount: Decimal, fractions: list[int]
) -> None:
    subject = lot(str(quantity), str(amount))
    drawn: list[Decimal] = []
    for fraction in fractions:
        wanted = (subject.remaining_quantity * fraction / 10_000).quantize(
            Decimal("0.000001")
        )
        if 0 < wanted <= subject.remaining_quantity:
            drawn.append(take(subject, wanted).basis)
    leftover = close(subject, LotStatus.EXPIRED)
    if leftover is not None:
        drawn.append(leftover.basis)

    assert sum(drawn, Decimal(0)) == amount
    assert subject.remaining_quantity == 0
    assert subject.remaining_basis == 0
    assert all(part >= 0 for part in drawn)
    check_conservation(subject, sum(drawn, Decimal(0)))


def test_a_share_is_rounded_once_at_twelve_places() -> None:
    subject = lot("3", "1.00")

    first = take(subject, Decimal(1))
    second = take(subject, Decimal(1))
    last = take(subject, Decimal(1))

    assert first.basis == Decimal("0.333333333333")
    assert second.basis == Decimal("0.333333333334")
    assert last.basis == Decimal("0.333333333333")
    assert first.basis + second.basis + last.basis == Decimal("1.00")


def test_taking_more_than_the_lot_holds_is_an_invariant_error() -> None:
    with pytest.raises(InvariantError):
        take(lot("1", "1"), Decimal(2))


def test_conservation_check_catches_a_lost_draw() -> None:
    subject = lot("2", "10")
    take(subject, Decimal(1))

    with pytest.raises(InvariantError):
        check_conservation(subject, Decimal(0))


def test_draw_skips_lots_not_yet_bought_or_expired() -> None:
    lots = [
        lot(
            "5",
            "5",
            lot_id="expired",
            purchase_id="a",
            expires_at=T0 + timedelta(days=1),
        ),
        lot("5", "10", lot_id="later", purchase_id="b", purchased_at=T0 + timedelta(3)),
        lot(
            "5",
            "15",
            lot_id="usable",
            purchase_id="c",
            purchased_at=T0 + timedelta(hours=1),
        ),
    ]

    draws, uncovered = draw(lots, Decimal(7), T0 + timedelta(days=2), DrawOrder.FIFO)

    assert [(d.lot.lot_id, d.credits) for d in draws] == [("usable", Decimal(5))]
    assert uncovered == Decimal(2)
