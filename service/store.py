"""Reading and writing the ledger's state, one batch transaction at a time.

The store speaks SQLAlchemy Core on an `AsyncConnection` that the caller has
begun, so one database transaction holds a whole batch: the fence on the
consumed offsets, the reads, the ledger writes, the outbox rows and the new
offsets. It works on PostgreSQL (production) and SQLite (the embedded store
of the file replay); the SQL differs only in the upsert dialect.

Concurrency. Each billing account belongs to one input partition number, and
each partition to one instance at a time. The first statement of every batch
updates that instance's `consumer_offsets` rows only if their `epoch` is the
one it claimed (a compare-and-set); the row locks it takes serialise the batch
with a new owner's claim. A zombie whose partitions were taken over fails the
compare-and-set, and its whole transaction rolls back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import Account, Deficit, Entry
from ledger.alerts import AlertState
from ledger.errors import InvariantError, LedgerError
from ledger.events import Event
from ledger.lots import Lot, LotStatus, check_conservation
from ledger.metering import Metered
from ledger.ordering import Position
from service.database import json_text
from service.tables import (
    ACCOUNTS,
    DEFICITS,
    DISPOSITIONS,
    ENTRIES,
    LOTS,
    OFFSETS,
    OUTBOX,
    PROCESSED,
)

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
LOOKUP_CHUNK_MAX = 5_000


class FencedError(LedgerError):
    """Another instance owns a partition this one tried to commit for."""


@dataclass(frozen=True, slots=True)
class Progress:
    """How far one input partition is handled.

    Everything below `next_offset` is handled; records from there up to
    `high_offset` may be (they were read past one still held). `time_max` is
    the latest event time applied from the partition, which lets expiry and
    ordering resume after a restart without waiting to see the data again.
    """

    next_offset: int = 0
    high_offset: int = 0
    time_max: datetime | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """What the store knows of one input partition when an owner claims it."""

    progress: Progress
    epoch: int


@dataclass(frozen=True, slots=True)
class Applied:
    digest: str
    position: Position


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class DispositionRecord:
    position: Position
    outcome: str
    reason: str
    event_id: str | None
    source: str | None


@dataclass(slots=True)
class Changes:
    """Everything one batch writes, gathered before the writes start."""

    accounts: dict[str, Account] = field(default_factory=dict)
    entries: list[tuple[Entry, dict[str, Any] | None]] = field(default_factory=list)
    processed: list[tuple[Event, Position]] = field(default_factory=list)
    dispositions: list[DispositionRecord] = field(default_factory=list)
    outbox: list[OutboxRecord] = field(default_factory=list)
    offsets: dict[TopicPartition, Progress] = field(default_factory=dict)


def _chunks(
    items: Sequence[Any], size: int = LOOKUP_CHUNK_MAX
) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Store:
    """The ledger's tables, for one consumer group."""

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id

    async def claim(
        self, conn: AsyncConnection, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, Claim]:
        """Take ownership of input partitions: bump and return their epochs.

        A zombie that still holds the old epoch can no longer commit.
        """
        claims: dict[TopicPartition, Claim] = {}
        table = OFFSETS
        for topic, partition in sorted(partitions):
            insert = (
                _insert(conn, table)
                .values(
                    group_id=self.group_id,
                    topic=topic,
                    partition=partition,
                    next_offset=0,
                    high_offset=0,
                    epoch=1,
                )
                .on_conflict_do_update(
                    index_elements=["group_id", "topic", "partition"],
                    set_={"epoch": table.c.epoch + 1},
                )
                .returning(
                    table.c.next_offset,
                    table.c.high_offset,
                    table.c.event_time_max,
                    table.c.epoch,
                )
            )
            row = (await conn.execute(insert)).one()
            claims[(topic, partition)] = Claim(
                Progress(row.next_offset, row.high_offset, row.event_time_max),
                row.epoch,
            )
        return claims

    async def fence(
        self,
        conn: AsyncConnection,
        epochs: dict[TopicPartition, int],
        offsets: dict[TopicPartition, Progress],
    ) -> None:
        """Compare-and-set the offsets of every owned partition, first thing.

        Raises:
            FencedError: a partition's epoch moved on: it has a new owner.
        """
        table = OFFSETS
        for (topic, partition), epoch in sorted(epochs.items()):
            values: dict[str, Any] = {}
            progress = offsets.get((topic, partition))
            if progress is not None:
                values = {
                    "next_offset": progress.next_offset,
                    "high_offset": progress.high_offset,
                    "event_time_max": progress.time_max,
                }
            update = (
                sa.update(table)
                .where(
                    table.c.group_id == self.group_id,
                    table.c.topic == topic,
                    table.c.partition == partition,
                    table.c.epoch == epoch,
                )
                .values(**values or {"epoch": epoch})
            )
            if (await conn.execute(update)).rowcount != 1:
                raise FencedError(f"{topic}[{partition}] is owned by a newer epoch")

    async def applied(
        self, conn: AsyncConnection, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Applied]:
        """The events among `keys` that were applied before, by (source, id)."""
        found: dict[tuple[str, str], Applied] = {}
        table = PROCESSED
        for chunk in _chunks(sorted(set(keys))):
            query = sa.select(
                table.c.source,
                table.c.event_id,
                table.c.digest,
                table.c.topic,
                table.c.partition,
                table.c.offset,
            )
            query = _matching(
                conn,
                query,
                (table.c.source, table.c.event_id),
                chunk,
                (sa.Text, sa.Text),
            )
            for row in await conn.execute(query):
                found[(row.source, row.event_id)] = Applied(
                    row.digest, Position(row.topic, row.partition, row.offset)
                )
        return found

    async def disposed(
        self, conn: AsyncConnection, positions: Sequence[Position]
    ) -> set[Position]:
        """The positions among `positions` already dead-lettered or counted."""
        found: set[Position] = set()
        table = DISPOSITIONS
        for chunk in _chunks(sorted(set(positions))):
            query = _matching(
                conn,
                sa.select(table.c.topic, table.c.partition, table.c.offset),
                (table.c.topic, table.c.partition, table.c.offset),
                [(p.topic, p.partition, p.offset) for p in chunk],
                (sa.Text, sa.Integer, sa.BigInteger),
            )
            for row in await conn.execute(query):
                found.add(Position(row.topic, row.partition, row.offset))
        return found

    async def load_accounts(
        self,
        conn: AsyncConnection,
        account_ids: Iterable[str],
        refunded: dict[str, set[str]] | None = None,
    ) -> dict[str, Account]:
        """Accounts with their open lots, owed credits and refunded lots."""
        ids = sorted(set(account_ids))
        accounts = {account_id: Account(account_id) for account_id in ids}
        refunded = refunded or {}
        for chunk in _chunks(ids):
            await self._load_chunk(conn, chunk, accounts, refunded)
        return accounts

    async def _load_chunk(
        self,
        conn: AsyncConnection,
        ids: Sequence[str],
        accounts: dict[str, Account],
        refunded: dict[str, set[str]],
    ) -> None:
        keys = [(account_id,) for account_id in ids]
        table = ACCOUNTS
        query = _matching(
            conn, sa.select(table), (table.c.account_id,), keys, (sa.Text,)
        )
        for row in await conn.execute(query):
            account = accounts[row.account_id]
            account.partition = row.partition
            account.name = row.name
            account.account_type = row.account_type
            account.billing_currency = row.billing_currency
            account.last_event_at = row.last_event_at
            account.alerts = AlertState.from_json(row.alert_state)
        lots = LOTS
        query = _matching(
            conn,
            sa.select(lots).where(lots.c.status == LotStatus.OPEN),
            (lots.c.account_id,),
            keys,
            (sa.Text,),
        )
        found = {row.lot_id: _lot(row) for row in await conn.execute(query)}
        named = [
            sa.and_(
                lots.c.account_id == account_id, lots.c.purchase_id.in_(sorted(names))
            )
            for account_id, names in refunded.items()
            if account_id in accounts and account_id in set(ids)
        ]
        if named:
            for row in await conn.execute(sa.select(lots).where(sa.or_(*named))):
                found.setdefault(row.lot_id, _lot(row))
        for lot in found.values():
            accounts[lot.account_id].lots.append(lot)
        for account in accounts.values():
            account.lots.sort(key=lambda lot: lot.fifo_key)
        deficits = DEFICITS
        query = _matching(
            conn,
            sa.select(deficits).where(deficits.c.credits > 0),
            (deficits.c.account_id,),
            keys,
            (sa.Text,),
        )
        for row in await conn.execute(query):
            accounts[row.account_id].deficits.append(_deficit(row))

    async def accounts_expiring(
        self,
        conn: AsyncConnection,
        cutoffs: dict[int, datetime],
        lots_max: int,
        horizon: timedelta | None = None,
    ) -> list[str]:
        """Accounts with an open lot expiring by their partition's cutoff, or
        (with a horizon) within the horizon and not yet announced."""
        found: set[str] = set()
        for partition, cutoff in sorted(cutoffs.items()):
            due = LOTS.c.expires_at <= cutoff
            if horizon is not None:
                due = sa.or_(
                    due,
                    sa.and_(
                        LOTS.c.expires_at <= cutoff + horizon,
                        LOTS.c.expiry_alerted.is_(False),
                    ),
                )
            query = (
                sa.select(LOTS.c.account_id)
                .where(
                    LOTS.c.status == LotStatus.OPEN,
                    LOTS.c.partition == partition,
                    due,
                )
                .order_by(LOTS.c.expires_at)
                .limit(lots_max)
            )
            found.update(row.account_id for row in await conn.execute(query))
        return sorted(found)

    async def save(self, conn: AsyncConnection, changes: Changes) -> None:
        """Write one batch's changes, then check the lots it closed.

        Raises:
            InvariantError: a closed lot's journal does not add up; the caller
                rolls back and stops.
        """
        await self._save_accounts(conn, changes.accounts.values())
        closed = await self._save_lots(conn, changes.accounts.values())
        await self._save_deficits(conn, changes.accounts.values())
        await self._insert(
            conn, ENTRIES, [_entry_row(entry, row) for entry, row in changes.entries]
        )
        await self._insert(
            conn,
            PROCESSED,
            [
                {
                    "source": event.source,
                    "event_id": event.id,
                    "digest": event.digest,
                    "topic": position.topic,
                    "partition": position.partition,
                    "offset": position.offset,
                    "account_id": event.account_id,
                }
                for event, position in changes.processed
            ],
        )
        await self._insert(
            conn,
            DISPOSITIONS,
            [
                {
                    "topic": d.position.topic,
                    "partition": d.position.partition,
                    "offset": d.position.offset,
                    "outcome": d.outcome,
                    "reason": d.reason,
                    "event_id": d.event_id,
                    "source": d.source,
                }
                for d in changes.dispositions
            ],
        )
        if changes.outbox:
            await self._save_outbox(conn, changes.outbox)
        await self._check_closed_lots(conn, closed)

    async def _save_accounts(
        self, conn: AsyncConnection, accounts: Iterable[Account]
    ) -> None:
        rows = [
            {
                "account_id": a.account_id,
                "partition": a.partition,
                "name": a.name,
                "account_type": a.account_type,
                "billing_currency": a.billing_currency,
                "last_event_at": a.last_event_at,
                "alert_state": a.alerts.to_json(),
            }
            for a in accounts
            if a.changed
        ]
        await self._upsert(conn, ACCOUNTS, rows, ["account_id"])

    async def _save_lots(
        self, conn: AsyncConnection, accounts: Iterable[Account]
    ) -> list[Lot]:
        rows, closed = [], []
        for account in accounts:
            for lot in account.lots:
                if not lot.changed:
                    continue
                rows.append(_lot_values(lot, account.partition))
                if lot.status is not LotStatus.OPEN:
                    closed.append(lot)
        await self._upsert(conn, LOTS, rows, ["lot_id"])
        return closed

    async def _save_deficits(
        self, conn: AsyncConnection, accounts: Iterable[Account]
    ) -> None:
        """Upsert what is still owed; delete deficits that were settled."""
        owed, settled = [], []
        for account in accounts:
            for deficit in account.deficits:
                if not deficit.changed:
                    continue
                if deficit.owed.credits > 0:
                    owed.append(_deficit_values(account.account_id, deficit))
                else:
                    settled.append(
                        (
                            account.account_id,
                            deficit.owed.usage_source,
                            deficit.owed.usage_id,
                        )
                    )
        await self._upsert(
            conn, DEFICITS, owed, ["account_id", "usage_source", "usage_id"]
        )
        for chunk in _chunks(settled):
            await conn.execute(
                sa.delete(DEFICITS).where(
                    sa.tuple_(
                        DEFICITS.c.account_id,
                        DEFICITS.c.usage_source,
                        DEFICITS.c.usage_id,
                    ).in_(list(chunk))
                )
            )

    async def _save_outbox(
        self, conn: AsyncConnection, records: Sequence[OutboxRecord]
    ) -> None:
        txid = 0
        if conn.dialect.name == "postgresql":
            txid = (
                await conn.execute(sa.text("SELECT pg_current_xact_id()::text::bigint"))
            ).scalar_one()
        await self._insert(
            conn,
            OUTBOX,
            [
                {
                    "txid": txid,
                    "topic": r.topic,
                    "key": r.key,
                    "value": r.value,
                    "headers": [[name, value.hex()] for name, value in r.headers],
                }
                for r in records
            ],
        )

    async def _check_closed_lots(
        self, conn: AsyncConnection, closed: list[Lot]
    ) -> None:
        """The journal of a closed lot must return exactly to zero basis."""
        if not closed:
            return
        totals = await self._journal_basis(conn, [lot.lot_id for lot in closed])
        for lot in closed:
            journal = totals.get(lot.lot_id)
            if journal is None:
                raise InvariantError(f"lot {lot.lot_id} closed without a journal")
            check_conservation(lot, lot.amount - journal)

    async def _journal_basis(
        self, conn: AsyncConnection, lot_ids: list[str]
    ) -> dict[str, Decimal]:
        """Sum of journal basis per lot, exactly.

        PostgreSQL sums NUMERIC exactly; SQLite would sum the text as binary
        floats, so there the sum is taken here, in Decimal.
        """
        totals: dict[str, Decimal] = {}
        exact_in_sql = conn.dialect.name == "postgresql"
        for chunk in _chunks(lot_ids):
            if exact_in_sql:
                query = (
                    sa.select(ENTRIES.c.lot_id, sa.func.sum(ENTRIES.c.basis))
                    .where(ENTRIES.c.lot_id.in_(chunk))
                    .group_by(ENTRIES.c.lot_id)
                )
                for lot_id, total in await conn.execute(query):
                    totals[lot_id] = Decimal(total)
                continue
            query = sa.select(ENTRIES.c.lot_id, ENTRIES.c.basis).where(
                ENTRIES.c.lot_id.in_(chunk)
            )
            for lot_id, basis in await conn.execute(query):
                totals[lot_id] = totals.get(lot_id, Decimal(0)) + basis
        return totals

    async def _insert(
        self, conn: AsyncConnection, table: sa.Table, rows: list[dict[str, Any]]
    ) -> None:
        """Append rows; on PostgreSQL with COPY, several times faster than
        INSERT for the thousands of journal, outbox and event rows of a batch.

        Raises:
            InvariantError: the connection is not inside the batch's
                transaction, where a COPY would commit on its own.
        """
        if not rows:
            return
        if conn.dialect.name != "postgresql":
            await conn.execute(sa.insert(table), rows)
            return
        raw = (await conn.get_raw_connection()).driver_connection
        if raw is None or not raw.is_in_transaction():
            raise InvariantError(f"COPY into {table.name} outside a transaction")
        columns = list(rows[0])
        documents = {
            name for name in columns if isinstance(table.c[name].type, sa.JSON)
        }
        await raw.copy_records_to_table(
            table.name,
            columns=columns,
            records=[
                tuple(
                    json_text(row[name])
                    if name in documents and row[name] is not None
                    else row[name]
                    for name in columns
                )
                for row in rows
            ],
        )

    async def _upsert(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        rows: list[dict[str, Any]],
        keys: list[str],
    ) -> None:
        if not rows:
            return
        if conn.dialect.name == "postgresql":
            await conn.execute(_upsert_unnested(table, rows, keys))
            return
        statement = _insert(conn, table)
        update = {
            column: getattr(statement.excluded, column)
            for column in rows[0]
            if column not in keys
        }
        await conn.execute(
            statement.on_conflict_do_update(index_elements=keys, set_=update), rows
        )


def _upsert_unnested(
    table: sa.Table, rows: list[dict[str, Any]], keys: list[str]
) -> Any:
    """One PostgreSQL statement for many rows: each column travels as one
    array parameter and is unnested into the rows to insert or update,
    instead of a parameter per value (thousands for a batch's lots)."""
    columns = list(rows[0])
    arrays = [
        sa.literal(
            [row[name] for row in rows],
            type_=postgresql.ARRAY(_element_type(table.c[name].type)),
        )
        for name in columns
    ]
    source = sa.select(sa.func.unnest(*arrays).table_valued(*columns).render_derived())
    statement = postgresql.insert(table).from_select(columns, source)
    update = {
        column: statement.excluded[column] for column in columns if column not in keys
    }
    return statement.on_conflict_do_update(index_elements=keys, set_=update)


def _element_type(kind: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    """The PostgreSQL type of one array element for a column's type."""
    if isinstance(kind, sa.types.TypeDecorator):
        return _element_type(kind.impl_instance)
    if isinstance(kind, sa.JSON):
        return postgresql.JSONB(none_as_null=True)
    return kind


def _matching(
    conn: AsyncConnection,
    query: sa.Select[Any],
    columns: Sequence[sa.ColumnElement[Any]],
    keys: Sequence[tuple[Any, ...]],
    types: Sequence[type[sa.types.TypeEngine[Any]]],
) -> sa.Select[Any]:
    """`query` limited to rows whose `columns` equal one of `keys`.

    PostgreSQL plans a long list of row values badly (thousands of ORs); a
    join with the keys unnested from one array per column walks the primary
    key instead. SQLite takes the row-value list as it is.
    """
    if conn.dialect.name != "postgresql":
        return query.where(sa.tuple_(*columns).in_(keys))
    arrays = [
        sa.literal([key[n] for key in keys], type_=postgresql.ARRAY(kind()))
        for n, kind in enumerate(types)
    ]
    wanted = (
        sa.func.unnest(*arrays)
        .table_valued(*(f"k{n}" for n in range(len(columns))))
        .render_derived()
    )
    return query.join(
        wanted,
        sa.and_(*(column == wanted.c[f"k{n}"] for n, column in enumerate(columns))),
    )


def _insert(conn: AsyncConnection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _lot(row: Any) -> Lot:
    return Lot(
        lot_id=row.lot_id,
        account_id=row.account_id,
        currency=row.currency,
        billing_currency=row.billing_currency,
        purchased_at=row.purchased_at,
        purchase_id=row.purchase_id,
        purchase_source=row.purchase_source,
        expires_at=row.expires_at,
        quantity=row.quantity,
        amount=row.amount,
        remaining_quantity=row.remaining_quantity,
        remaining_basis=row.remaining_basis,
        refunded_amount=row.refunded_amount,
        invoice_id=row.invoice_id,
        sub_account_id=row.sub_account_id,
        sub_account_name=row.sub_account_name,
        sub_account_type=row.sub_account_type,
        status=LotStatus(row.status),
        expiry_alerted=row.expiry_alerted,
    )


def _lot_values(lot: Lot, partition: int | None) -> dict[str, Any]:
    return {
        "lot_id": lot.lot_id,
        "account_id": lot.account_id,
        "partition": partition,
        "currency": lot.currency,
        "billing_currency": lot.billing_currency,
        "purchased_at": lot.purchased_at,
        "purchase_id": lot.purchase_id,
        "purchase_source": lot.purchase_source,
        "expires_at": lot.expires_at,
        "quantity": lot.quantity,
        "amount": lot.amount,
        "remaining_quantity": lot.remaining_quantity,
        "remaining_basis": lot.remaining_basis,
        "refunded_amount": lot.refunded_amount,
        "invoice_id": lot.invoice_id,
        "sub_account_id": lot.sub_account_id,
        "sub_account_name": lot.sub_account_name,
        "sub_account_type": lot.sub_account_type,
        "status": str(lot.status),
        "expiry_alerted": lot.expiry_alerted,
    }


_DEFICIT_DETAILS = (
    "sub_account_id",
    "sub_account_name",
    "sub_account_type",
    "resource_id",
    "resource_name",
    "region_id",
    "region_name",
    "tags",
)


def _deficit(row: Any) -> Deficit:
    details = row.details or {}
    return Deficit(
        Metered(
            usage_id=row.usage_id,
            usage_source=row.usage_source,
            occurred_at=row.occurred_at,
            sku_id=row.sku_id,
            currency=row.currency,
            credits=row.credits,
            pricing_quantity=row.pricing_quantity,
            consumed_quantity=row.consumed_quantity,
            pc_list_unit_price=row.pc_list_unit_price,
            pc_contracted_unit_price=row.pc_contracted_unit_price,
            pricing_category=row.pricing_category,
            sub_account_id=details.get("sub_account_id"),
            sub_account_name=details.get("sub_account_name"),
            sub_account_type=details.get("sub_account_type"),
            resource_id=details.get("resource_id"),
            resource_name=details.get("resource_name"),
            region_id=details.get("region_id"),
            region_name=details.get("region_name"),
            tags=dict(details.get("tags") or {}),
        )
    )


def _deficit_values(account_id: str, deficit: Deficit) -> dict[str, Any]:
    owed = deficit.owed
    return {
        "account_id": account_id,
        "usage_source": owed.usage_source,
        "usage_id": owed.usage_id,
        "occurred_at": owed.occurred_at,
        "currency": owed.currency,
        "sku_id": owed.sku_id,
        "credits": owed.credits,
        "pricing_quantity": owed.pricing_quantity,
        "consumed_quantity": owed.consumed_quantity,
        "pc_list_unit_price": owed.pc_list_unit_price,
        "pc_contracted_unit_price": owed.pc_contracted_unit_price,
        "pricing_category": owed.pricing_category,
        "details": {name: getattr(owed, name) for name in _DEFICIT_DETAILS},
    }


def _entry_row(entry: Entry, row: dict[str, Any] | None) -> dict[str, Any]:
    """A journal line; `row` is its charge's rendered FOCUS row, if any."""
    charge = entry.charge
    return {
        "entry_id": entry.entry_id,
        "kind": str(entry.kind),
        "account_id": entry.account_id,
        "currency": entry.currency,
        "lot_id": entry.lot_id,
        "occurred_at": entry.occurred_at,
        "credits": entry.credits,
        "lot_credits": entry.lot_credits,
        "basis": entry.basis,
        "event_id": entry.event_id,
        "event_source": entry.event_source,
        "billing_period_start": charge.billing_period[0] if charge else None,
        "billing_period": charge.billing_period_label if charge else None,
        "invoice_id": charge.invoice_id if charge else None,
        "charge": row,
    }
