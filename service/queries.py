"""Read-only questions ops and finance ask: balances, lots, journal, rows.

Reads run in their own short transactions and never lock what the consumer
writes. A balance counts the credits of lots usable at the instant asked
(bought by then, not expired then) minus credits owed, so an expiry shows in
the balance at `expires_at` even before its row is written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import money
from ledger.charges import COLUMNS
from ledger.lots import LotStatus
from service.tables import DEFICITS, ENTRIES, LOTS


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: str
    currency: str
    credits: Decimal
    value: Decimal
    billing_currency: str | None
    owed_credits: Decimal
    open_lots: int


@dataclass(slots=True)
class _Total:
    credits: Decimal = Decimal(0)
    value: Decimal = Decimal(0)
    owed: Decimal = Decimal(0)
    lots: int = 0
    billing_currency: str | None = None


async def balances(
    conn: AsyncConnection, moment: datetime, account_id: str | None = None
) -> list[Balance]:
    """Current balances per account and virtual currency."""
    usable = sa.and_(
        LOTS.c.status == LotStatus.OPEN,
        LOTS.c.purchased_at <= moment,
        sa.or_(LOTS.c.expires_at.is_(None), LOTS.c.expires_at > moment),
    )
    held = sa.select(
        LOTS.c.account_id,
        LOTS.c.currency,
        LOTS.c.billing_currency,
        LOTS.c.remaining_quantity,
        LOTS.c.remaining_basis,
    ).where(usable)
    owed = sa.select(
        DEFICITS.c.account_id, DEFICITS.c.currency, DEFICITS.c.credits
    ).where(DEFICITS.c.credits > 0)
    if account_id is not None:
        held = held.where(LOTS.c.account_id == account_id)
        owed = owed.where(DEFICITS.c.account_id == account_id)
    totals: dict[tuple[str, str], _Total] = {}
    for row in await conn.execute(held):
        total = totals.setdefault((row.account_id, row.currency), _Total())
        total.credits += row.remaining_quantity
        total.value += row.remaining_basis
        total.lots += 1
        total.billing_currency = row.billing_currency
    for debt in await conn.execute(owed):
        totals.setdefault(
            (debt.account_id, debt.currency), _Total()
        ).owed += debt.credits
    return [
        Balance(
            account_id=account,
            currency=currency,
            credits=money.sub(total.credits, total.owed),
            value=total.value,
            billing_currency=total.billing_currency,
            owed_credits=total.owed,
            open_lots=total.lots,
        )
        for (account, currency), total in sorted(totals.items())
    ]


async def charge_rows(
    conn: AsyncConnection, chunk_rows: int = 5000
) -> AsyncIterator[dict[str, Any]]:
    """Every FOCUS row in journal order, columns in spec order."""
    after = 0
    while True:
        query = (
            sa.select(ENTRIES.c.seq, ENTRIES.c.charge)
            .where(ENTRIES.c.seq > after, ENTRIES.c.charge.is_not(None))
            .order_by(ENTRIES.c.seq)
            .limit(chunk_rows)
        )
        rows: Sequence[Any] = (await conn.execute(query)).all()
        if not rows:
            return
        for row in rows:
            yield {column: row.charge.get(column) for column in COLUMNS}
        after = rows[-1].seq
