"""What finance asks at month end: invoice reconciliation and period reports.

An invoice that sold credits is reconciled lot by lot:

    credits billed = consumed + expired + returned + forfeited + remaining

where consumed is the EffectiveCost of the usage and settlement rows the
invoice's lots paid for, expired the EffectiveCost of their expiry rows,
returned the money refunded against them, forfeited the EffectiveCost of
those refunds (basis revoked minus money returned), and remaining the basis
still in the lots. Tax on the invoice is shown beside, not inside, the
identity. Every figure comes from the journal and is exact.

The month-end report gives, per billing account and billing period, what
was billed and what was effectively spent, by kind of row, and the credit
balance at the period's start and end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import money
from service.queries import Balance, balances
from service.tables import ENTRIES, LOTS


class NoSuchInvoiceError(LookupError):
    """No row of the ledger carries the invoice id asked for."""


@dataclass(slots=True)
class LotShare:
    """One lot of an invoice, and where its money went."""

    lot_id: str
    account_id: str
    currency: str
    credits_bought: Decimal
    paid: Decimal
    consumed: Decimal = Decimal(0)
    expired: Decimal = Decimal(0)
    returned: Decimal = Decimal(0)
    forfeited: Decimal = Decimal(0)
    remaining: Decimal = Decimal(0)
    credits_remaining: Decimal = Decimal(0)
    status: str = ""

    @property
    def accounted(self) -> Decimal:
        return (
            self.consumed
            + self.expired
            + self.returned
            + self.forfeited
            + (self.remaining)
        )


@dataclass(slots=True)
class InvoiceReconciliation:
    invoice_id: str
    billing_currency: str | None
    billed: Decimal
    tax: Decimal
    lots: list[LotShare] = field(default_factory=list)
    other_rows: Decimal = Decimal(0)

    @property
    def credits_billed(self) -> Decimal:
        return sum((lot.paid for lot in self.lots), Decimal(0))

    def total(self, name: str) -> Decimal:
        return sum((getattr(lot, name) for lot in self.lots), Decimal(0))

    @property
    def balanced(self) -> bool:
        """Every cent billed for credits is accounted for, exactly."""
        return self.credits_billed == self.total("accounted")


async def _charges(conn: AsyncConnection, *conditions: Any) -> list[dict[str, Any]]:
    query = sa.select(ENTRIES.c.charge).where(
        ENTRIES.c.charge.is_not(None), *conditions
    )
    return [row.charge for row in await conn.execute(query.order_by(ENTRIES.c.seq))]


def _d(value: Any) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal(0)


async def reconcile_invoice(
    conn: AsyncConnection, invoice_id: str
) -> InvoiceReconciliation:
    """Where the money of one invoice went, per lot it funded.

    Raises:
        NoSuchInvoiceError: no row carries this InvoiceId.
    """
    rows = await _charges(conn, ENTRIES.c.invoice_id == invoice_id)
    if not rows:
        raise NoSuchInvoiceError(invoice_id)
    lots = {
        row.lot_id: LotShare(
            lot_id=row.lot_id,
            account_id=row.account_id,
            currency=row.currency,
            credits_bought=row.quantity,
            paid=row.amount,
            remaining=row.remaining_basis,
            credits_remaining=row.remaining_quantity,
            status=row.status,
        )
        for row in await conn.execute(
            sa.select(LOTS)
            .where(LOTS.c.invoice_id == invoice_id)
            .order_by(LOTS.c.purchased_at)
        )
    }
    billed = sum((_d(row["BilledCost"]) for row in rows), Decimal(0))
    tax = sum(
        (_d(r["BilledCost"]) for r in rows if r["ChargeCategory"] == "Tax"), Decimal(0)
    )
    result = InvoiceReconciliation(
        invoice_id, rows[0]["BillingCurrency"], billed, tax, list(lots.values())
    )
    if lots:
        for row in await _charges(conn, ENTRIES.c.lot_id.in_(list(lots))):
            share = lots[row["x_CreditLotId"]]
            kind, effective = row["x_ChargeKind"], _d(row["EffectiveCost"])
            if kind in ("usage", "settlement"):
                share.consumed = money.add(share.consumed, effective)
            elif kind == "expiry":
                share.expired = money.add(share.expired, effective)
            elif kind == "refund":
                share.returned = money.sub(share.returned, _d(row["BilledCost"]))
                share.forfeited = money.add(share.forfeited, effective)
    result.other_rows = billed - tax - result.credits_billed
    return result


@dataclass(frozen=True, slots=True)
class PeriodLine:
    """One billing account's billing period, summed by kind of row."""

    billing_account_id: str
    period: str
    billing_currency: str | None
    billed: dict[str, Decimal]
    effective: dict[str, Decimal]
    credits: dict[str, Decimal]
    opening: list[Balance]
    closing: list[Balance]

    @property
    def billed_total(self) -> Decimal:
        return sum(self.billed.values(), Decimal(0))

    @property
    def effective_total(self) -> Decimal:
        return sum(self.effective.values(), Decimal(0))


async def month_end(
    conn: AsyncConnection, period: str, account_id: str | None = None
) -> list[PeriodLine]:
    """Per billing account, its rows of one billing period ("2025-04")."""
    conditions = [ENTRIES.c.billing_period == period]
    if account_id is not None:
        conditions.append(ENTRIES.c.account_id == account_id)
    by_account: dict[str, list[dict[str, Any]]] = {}
    for row in await _charges(conn, *conditions):
        by_account.setdefault(row["BillingAccountId"], []).append(row)
    lines = []
    for account, rows in sorted(by_account.items()):
        billed: dict[str, Decimal] = {}
        effective: dict[str, Decimal] = {}
        credits: dict[str, Decimal] = {}
        for row in rows:
            kind = row["x_ChargeKind"]
            billed[kind] = billed.get(kind, Decimal(0)) + _d(row["BilledCost"])
            effective[kind] = effective.get(kind, Decimal(0)) + _d(row["EffectiveCost"])
            amount = (
                row["PricingQuantity"]
                if kind in ("purchase", "refund")
                else row["PricingCurrencyEffectiveCost"]
            )
            credits[kind] = credits.get(kind, Decimal(0)) + _d(amount)
        start = _instant(rows[0]["BillingPeriodStart"])
        end = _instant(rows[0]["BillingPeriodEnd"])
        lines.append(
            PeriodLine(
                account,
                period,
                rows[0]["BillingCurrency"],
                billed,
                effective,
                credits,
                await balances(conn, start, account),
                await balances(conn, end, account),
            )
        )
    return lines


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def invoice_totals(conn: AsyncConnection) -> dict[str, Decimal]:
    """The ledger's total of every invoice: the sum of its rows' BilledCost."""
    totals: dict[str, Decimal] = {}
    for row in await _charges(conn, ENTRIES.c.invoice_id.is_not(None)):
        invoice = row["InvoiceId"]
        totals[invoice] = totals.get(invoice, Decimal(0)) + _d(row["BilledCost"])
    return totals


async def basis_left(conn: AsyncConnection) -> dict[str, Decimal]:
    """The basis still in every lot, from the lots themselves."""
    query = sa.select(LOTS.c.lot_id, LOTS.c.remaining_basis)
    return {row.lot_id: row.remaining_basis for row in await conn.execute(query)}
