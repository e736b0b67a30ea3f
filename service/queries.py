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
from service.tables import ACCOUNTS, ENTRIES, LOTS


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


@dataclass(frozen=True, slots=True)
class LotView:
    lot_id: str
    currency: str
    status: str
    purchased_at: datetime
    expires_at: datetime | None
    quantity: Decimal
    remaining_quantity: Decimal
    amount: Decimal
    remaining_basis: Decimal
    unit_cost: Decimal
    billing_currency: str
    invoice_id: str
    purchase_id: str


async def lots(
    conn: AsyncConnection, account_id: str, include_closed: bool = False
) -> list[LotView]:
    """An account's lots in FIFO order; open ones only unless asked."""
    query = sa.select(LOTS).where(LOTS.c.account_id == account_id)
    if not include_closed:
        query = query.where(LOTS.c.status == "open")
    query = query.order_by(LOTS.c.purchased_at, LOTS.c.purchase_id)
    return [
        LotView(
            lot_id=row.lot_id,
            currency=row.currency,
            status=row.status,
            purchased_at=row.purchased_at,
            expires_at=row.expires_at,
            quantity=row.quantity,
            remaining_quantity=row.remaining_quantity,
            amount=row.amount,
            remaining_basis=row.remaining_basis,
            unit_cost=money.price(money.div(row.amount, row.quantity)),
            billing_currency=row.billing_currency,
            invoice_id=row.invoice_id,
            purchase_id=row.purchase_id,
        )
        for row in await conn.execute(query)
    ]


@dataclass(frozen=True, slots=True)
class EntryView:
    seq: int
    kind: str
    occurred_at: datetime
    currency: str
    credits: Decimal
    basis: Decimal
    lot_id: str | None
    event_id: str
    charge_id: str
    invoice_id: str | None


HISTORY_PAGE_MAX = 500


async def history(
    conn: AsyncConnection, account_id: str, after_seq: int = 0, limit: int = 100
) -> tuple[list[EntryView], int | None]:
    """One page of an account's journal in ledger order, and the next cursor.

    Pages are at most `HISTORY_PAGE_MAX` lines; the cursor is the last `seq`
    of the page, None when there is no more.
    """
    size = max(1, min(limit, HISTORY_PAGE_MAX))
    query = (
        sa.select(ENTRIES)
        .where(ENTRIES.c.account_id == account_id, ENTRIES.c.seq > after_seq)
        .order_by(ENTRIES.c.seq)
        .limit(size + 1)
    )
    found = list(await conn.execute(query))
    page = [
        EntryView(
            seq=row.seq,
            kind=row.kind,
            occurred_at=row.occurred_at,
            currency=row.currency,
            credits=row.credits,
            basis=row.basis,
            lot_id=row.lot_id,
            event_id=row.event_id,
            charge_id=row.entry_id,
            invoice_id=row.invoice_id,
        )
        for row in found[:size]
    ]
    more = len(found) > size
    return page, (page[-1].seq if more and page else None)


async def recent_rows(
    conn: AsyncConnection, account_id: str, limit: int = 50
) -> list[dict[str, Any]]:
    """The account's latest FOCUS rows, newest first."""
    query = (
        sa.select(ENTRIES.c.charge)
        .where(ENTRIES.c.account_id == account_id, ENTRIES.c.charge.is_not(None))
        .order_by(ENTRIES.c.seq.desc())
        .limit(max(1, min(limit, HISTORY_PAGE_MAX)))
    )
    return [
        {column: row.charge.get(column) for column in COLUMNS}
        for row in await conn.execute(query)
    ]


async def account_ids(
    conn: AsyncConnection, after: str = "", limit: int = 100
) -> list[str]:
    query = (
        sa.select(ACCOUNTS.c.account_id)
        .where(ACCOUNTS.c.account_id > after)
        .order_by(ACCOUNTS.c.account_id)
        .limit(max(1, min(limit, HISTORY_PAGE_MAX)))
    )
    return [row.account_id for row in await conn.execute(query)]


async def burndown(conn: AsyncConnection, account_id: str) -> list[dict[str, Any]]:
    """Per lot, its remaining credits after each change, for a chart.

    A lot's line starts at its purchase and ends at zero: spent, refunded, or
    expired (the expiry instant is marked).
    """
    lot_rows = {
        row.lot_id: row
        for row in await conn.execute(
            sa.select(LOTS).where(LOTS.c.account_id == account_id)
        )
    }
    points: dict[str, list[tuple[datetime, Decimal]]] = {lot: [] for lot in lot_rows}
    held: dict[str, Decimal] = {lot: Decimal(0) for lot in lot_rows}
    query = (
        sa.select(ENTRIES.c.lot_id, ENTRIES.c.occurred_at, ENTRIES.c.lot_credits)
        .where(ENTRIES.c.account_id == account_id, ENTRIES.c.lot_id.is_not(None))
        .order_by(ENTRIES.c.occurred_at, ENTRIES.c.seq)
    )
    for lot_id, moment, change in await conn.execute(query):
        if lot_id not in held or change == 0:
            continue
        held[lot_id] = money.add(held[lot_id], change)
        points[lot_id].append((moment, held[lot_id]))
    return [
        {
            "lot_id": lot_id,
            "currency": row.currency,
            "purchased_at": row.purchased_at,
            "expires_at": row.expires_at,
            "status": row.status,
            "points": points[lot_id],
        }
        for lot_id, row in sorted(
            lot_rows.items(), key=lambda item: item[1].purchased_at
        )
    ]
