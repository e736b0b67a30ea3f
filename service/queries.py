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
from service.tables import ENTRIES, LOTS


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
    """Balances per account and virtual currency as they stood at `moment`.

    Computed from the journal, so any past instant gives what a replay of the
    events up to it gives: the credits of lots bought by then and not expired
    then, minus the credits owed then. An account whose lots are spent shows
    a zero balance rather than no line.
    """
    per_lot = await _lot_sums(conn, moment, account_id)
    lots = sa.select(
        LOTS.c.lot_id,
        LOTS.c.account_id,
        LOTS.c.currency,
        LOTS.c.billing_currency,
        LOTS.c.expires_at,
    ).where(LOTS.c.purchased_at <= moment)
    owed = sa.select(
        ENTRIES.c.account_id,
        ENTRIES.c.currency,
        ENTRIES.c.kind,
        ENTRIES.c.credits,
        ENTRIES.c.lot_credits,
    ).where(
        ENTRIES.c.kind.in_(["deficit", "settlement"]), ENTRIES.c.occurred_at <= moment
    )
    if account_id is not None:
        lots = lots.where(LOTS.c.account_id == account_id)
        owed = owed.where(ENTRIES.c.account_id == account_id)
    totals: dict[tuple[str, str], _Total] = {}
    for lot in await conn.execute(lots):
        total = totals.setdefault((lot.account_id, lot.currency), _Total())
        total.billing_currency = lot.billing_currency
        if lot.expires_at is not None and lot.expires_at <= moment:
            continue
        credits, basis = per_lot.get(lot.lot_id, (Decimal(0), Decimal(0)))
        total.credits = money.add(total.credits, credits)
        total.value = money.add(total.value, basis)
        total.lots += credits > 0
    for debt in await conn.execute(owed):
        total = totals.setdefault((debt.account_id, debt.currency), _Total())
        # A deficit adds what it did not cover; a settlement pays it back.
        change = -debt.credits if debt.kind == "deficit" else debt.lot_credits
        total.owed = money.add(total.owed, change)
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


async def _lot_sums(
    conn: AsyncConnection, moment: datetime, account_id: str | None
) -> dict[str, tuple[Decimal, Decimal]]:
    """Per lot, the credits and basis its journal holds at `moment`, exactly.

    PostgreSQL sums NUMERIC exactly. SQLite would sum the text as binary
    floats, so there the lines are added here, as Decimals.
    """
    conditions = [ENTRIES.c.lot_id.is_not(None), ENTRIES.c.occurred_at <= moment]
    if account_id is not None:
        conditions.append(ENTRIES.c.account_id == account_id)
    if conn.dialect.name == "postgresql":
        grouped = (
            sa.select(
                ENTRIES.c.lot_id,
                sa.func.sum(ENTRIES.c.lot_credits),
                sa.func.sum(ENTRIES.c.basis),
            )
            .where(*conditions)
            .group_by(ENTRIES.c.lot_id)
        )
        return {row[0]: (row[1], row[2]) for row in await conn.execute(grouped)}
    lines = sa.select(ENTRIES.c.lot_id, ENTRIES.c.lot_credits, ENTRIES.c.basis).where(
        *conditions
    )
    sums: dict[str, tuple[Decimal, Decimal]] = {}
    for lot_id, credits, basis in await conn.execute(lines):
        held, value = sums.get(lot_id, (Decimal(0), Decimal(0)))
        sums[lot_id] = (money.add(held, credits), money.add(value, basis))
    return sums


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
