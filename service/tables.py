"""The ledger's tables (SQLModel), the same on PostgreSQL and on SQLite.

PostgreSQL is the production store; SQLite is the embedded store of the file
replay. Decimals are `NUMERIC(38, 12)` on PostgreSQL and text on SQLite, whose
own numeric type is a binary float; either way a value comes back as the
`Decimal` that went in.

Tables:

- `accounts`, `lots`, `deficits`: the state the core works on.
- `entries`: the journal, one line per movement in order (`seq`), with the
  FOCUS row of the movement when it has one.
- `processed_events`: every applied event by (source, id), with its content
  digest and input position, for de-duplication.
- `dispositions`: input records that were dead-lettered or counted as a
  duplicate, by position, so a record read again after a restart is not
  counted again.
- `consumer_offsets`: per input partition the offset to resume from, the
  highest offset handled, and the owner's epoch that fences a zombie.
- `outbox`: records waiting to be published, in commit order (PostgreSQL).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from ledger.money import COST_PLACES


class Exact(TypeDecorator[Decimal]):
    """NUMERIC(38, 12) where the database has exact decimals, else text."""

    impl = sa.Numeric(38, COST_PLACES)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(64))
        return dialect.type_descriptor(sa.Numeric(38, COST_PLACES, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None or dialect.name != "sqlite":
            return value
        return format(value, "f")

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware instant; SQLite keeps ISO text with the offset."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(40))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None or dialect.name != "sqlite":
            return value
        return value.isoformat(timespec="microseconds")

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        return datetime.fromisoformat(str(value))


JsonDocument = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)
# JSON kept as the text written (key order included), not parsed into jsonb:
# for documents that are stored and read whole, never queried inside.
JsonText = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSON(none_as_null=True), "postgresql"
)
Bytes = sa.LargeBinary()


def _exact(**kwargs: Any) -> Any:
    return Field(sa_type=Exact, **kwargs)


def _instant(**kwargs: Any) -> Any:
    return Field(sa_type=UtcDateTime, **kwargs)


class AccountRow(SQLModel, table=True):
    __tablename__ = "accounts"

    account_id: str = Field(primary_key=True, max_length=128)
    partition: int | None = None
    name: str | None = Field(default=None, max_length=256)
    account_type: str | None = Field(default=None, max_length=256)
    billing_currency: str | None = Field(default=None, max_length=3)
    last_event_at: datetime | None = _instant(default=None)
    alert_state: dict[str, Any] | None = Field(default=None, sa_type=JsonDocument)


class LotRow(SQLModel, table=True):
    __tablename__ = "lots"
    __table_args__ = (
        sa.Index("lots_open_by_account", "account_id", "status"),
        sa.Index("lots_expiring", "status", "partition", "expires_at"),
        sa.Index("lots_by_purchase", "account_id", "purchase_id"),
    )

    lot_id: str = Field(primary_key=True, max_length=36)
    account_id: str = Field(max_length=128)
    partition: int | None = None
    currency: str = Field(max_length=3)
    billing_currency: str = Field(max_length=3)
    purchased_at: datetime = _instant()
    purchase_id: str = Field(max_length=128)
    purchase_source: str = Field(max_length=256)
    expires_at: datetime | None = _instant(default=None)
    quantity: Decimal = _exact()
    amount: Decimal = _exact()
    remaining_quantity: Decimal = _exact()
    remaining_basis: Decimal = _exact()
    refunded_amount: Decimal = _exact()
    invoice_id: str = Field(max_length=128)
    sub_account_id: str | None = Field(default=None, max_length=128)
    sub_account_name: str | None = Field(default=None, max_length=256)
    sub_account_type: str | None = Field(default=None, max_length=256)
    status: str = Field(max_length=16)
    expiry_alerted: bool = Field(
        default=False, sa_column_kwargs={"server_default": sa.false()}
    )


class DeficitRow(SQLModel, table=True):
    __tablename__ = "deficits"

    account_id: str = Field(primary_key=True, max_length=128)
    usage_source: str = Field(primary_key=True, max_length=256)
    usage_id: str = Field(primary_key=True, max_length=128)
    occurred_at: datetime = _instant()
    currency: str = Field(max_length=3)
    sku_id: str = Field(max_length=128)
    credits: Decimal = _exact()
    pricing_quantity: Decimal = _exact()
    consumed_quantity: Decimal = _exact()
    pc_list_unit_price: Decimal = _exact()
    pc_contracted_unit_price: Decimal = _exact()
    pricing_category: str = Field(max_length=16)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JsonDocument)


class EntryRow(SQLModel, table=True):
    __tablename__ = "entries"
    __table_args__ = (
        sa.Index("entries_by_account", "account_id", "seq"),
        sa.Index("entries_by_lot", "lot_id"),
        sa.Index("entries_by_invoice", "invoice_id"),
        sa.Index("entries_by_period_label", "billing_period", "account_id"),
    )

    seq: int | None = Field(
        default=None,
        primary_key=True,
        sa_type=sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
    )
    entry_id: str = Field(max_length=36, unique=True)
    kind: str = Field(max_length=16)
    account_id: str = Field(max_length=128)
    currency: str = Field(max_length=3)
    lot_id: str | None = Field(default=None, max_length=36)
    occurred_at: datetime = _instant()
    credits: Decimal = _exact()
    lot_credits: Decimal = _exact()
    basis: Decimal = _exact()
    event_id: str = Field(max_length=128)
    event_source: str = Field(max_length=256)
    billing_period_start: datetime | None = _instant(default=None)
    billing_period: str | None = Field(default=None, max_length=7)
    invoice_id: str | None = Field(default=None, max_length=128)
    charge: dict[str, Any] | None = Field(default=None, sa_type=JsonText)


class ProcessedEvent(SQLModel, table=True):
    __tablename__ = "processed_events"

    source: str = Field(primary_key=True, max_length=256)
    event_id: str = Field(primary_key=True, max_length=128)
    digest: str = Field(max_length=64)
    topic: str = Field(max_length=249)
    partition: int
    offset: int = Field(sa_type=sa.BigInteger)
    account_id: str = Field(max_length=128)


class Disposition(SQLModel, table=True):
    __tablename__ = "dispositions"

    topic: str = Field(primary_key=True, max_length=249)
    partition: int = Field(primary_key=True)
    offset: int = Field(primary_key=True, sa_type=sa.BigInteger)
    outcome: str = Field(max_length=16)
    reason: str = Field(max_length=64)
    event_id: str | None = Field(default=None, max_length=128)
    source: str | None = Field(default=None, max_length=256)


class ConsumerOffset(SQLModel, table=True):
    __tablename__ = "consumer_offsets"

    group_id: str = Field(primary_key=True, max_length=249)
    topic: str = Field(primary_key=True, max_length=249)
    partition: int = Field(primary_key=True)
    next_offset: int = Field(default=0, sa_type=sa.BigInteger)
    high_offset: int = Field(default=0, sa_type=sa.BigInteger)
    event_time_max: datetime | None = _instant(default=None)
    epoch: int = Field(default=0, sa_type=sa.BigInteger)


class OutboxRow(SQLModel, table=True):
    """Records to publish. `txid` is the writing transaction's id: the relay
    publishes only rows of transactions older than every running one, so a
    row that commits late cannot be skipped (see `service.relay`)."""

    __tablename__ = "outbox"
    __table_args__ = (sa.Index("outbox_by_txid", "txid", "seq"),)

    seq: int | None = Field(
        default=None,
        primary_key=True,
        sa_type=sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
    )
    txid: int = Field(sa_type=sa.BigInteger)
    topic: str = Field(max_length=249)
    key: bytes | None = Field(default=None, sa_type=Bytes)
    value: bytes = Field(sa_type=Bytes)
    headers: list[list[str]] = Field(default_factory=list, sa_type=JsonDocument)


TABLES = SQLModel.metadata


def table_of(model: type[SQLModel]) -> sa.Table:
    """The Core table of a model, for bulk statements."""
    return cast(sa.Table, model.__table__)  # type: ignore[attr-defined]


ACCOUNTS = table_of(AccountRow)
LOTS = table_of(LotRow)
DEFICITS = table_of(DeficitRow)
ENTRIES = table_of(EntryRow)
PROCESSED = table_of(ProcessedEvent)
DISPOSITIONS = table_of(Disposition)
OFFSETS = table_of(ConsumerOffset)
OUTBOX = table_of(OutboxRow)
