"""The ledger's tables.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXACT = sa.Numeric(38, 12)
INSTANT = sa.DateTime(timezone=True)
JSON = postgresql.JSONB()


def _id(name: str, length: int = 128, **kwargs: object) -> sa.Column[str]:
    return sa.Column(name, sa.String(length), **kwargs)  # type: ignore[arg-type]


def upgrade() -> None:
    op.create_table(
        "accounts",
        _id("account_id", primary_key=True),
        sa.Column("partition", sa.Integer),
        sa.Column("name", sa.String(256)),
        sa.Column("account_type", sa.String(256)),
        sa.Column("billing_currency", sa.String(3)),
        sa.Column("last_event_at", INSTANT),
    )
    op.create_table(
        "lots",
        _id("lot_id", 36, primary_key=True),
        _id("account_id", nullable=False),
        sa.Column("partition", sa.Integer),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("billing_currency", sa.String(3), nullable=False),
        sa.Column("purchased_at", INSTANT, nullable=False),
        _id("purchase_id", nullable=False),
        _id("purchase_source", 256, nullable=False),
        sa.Column("expires_at", INSTANT),
        sa.Column("quantity", EXACT, nullable=False),
        sa.Column("amount", EXACT, nullable=False),
        sa.Column("remaining_quantity", EXACT, nullable=False),
        sa.Column("remaining_basis", EXACT, nullable=False),
        sa.Column("refunded_amount", EXACT, nullable=False),
        _id("invoice_id", nullable=False),
        _id("sub_account_id"),
        sa.Column("sub_account_name", sa.String(256)),
        sa.Column("sub_account_type", sa.String(256)),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_index("lots_open_by_account", "lots", ["account_id", "status"])
    op.create_index("lots_expiring", "lots", ["status", "partition", "expires_at"])
    op.create_index("lots_by_purchase", "lots", ["account_id", "purchase_id"])
    op.create_table(
        "deficits",
        _id("account_id", primary_key=True),
        _id("usage_source", 256, primary_key=True),
        _id("usage_id", primary_key=True),
        sa.Column("occurred_at", INSTANT, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        _id("sku_id", nullable=False),
        sa.Column("credits", EXACT, nullable=False),
        sa.Column("pricing_quantity", EXACT, nullable=False),
        sa.Column("consumed_quantity", EXACT, nullable=False),
        sa.Column("pc_list_unit_price", EXACT, nullable=False),
        sa.Column("pc_contracted_unit_price", EXACT, nullable=False),
        sa.Column("pricing_category", sa.String(16), nullable=False),
        sa.Column("details", JSON, nullable=False),
    )
    op.create_table(
        "entries",
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        _id("entry_id", 36, nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        _id("account_id", nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        _id("lot_id", 36),
        sa.Column("occurred_at", INSTANT, nullable=False),
        sa.Column("credits", EXACT, nullable=False),
        sa.Column("basis", EXACT, nullable=False),
        _id("event_id", nullable=False),
        _id("event_source", 256, nullable=False),
        sa.Column("billing_period_start", INSTANT),
        _id("invoice_id"),
        sa.Column("charge", JSON),
    )
    op.create_index("entries_by_account", "entries", ["account_id", "seq"])
    op.create_index("entries_by_lot", "entries", ["lot_id"])
    op.create_index("entries_by_invoice", "entries", ["invoice_id"])
    op.create_index(
        "entries_by_period", "entries", ["billing_period_start", "account_id"]
    )
    op.create_table(
        "processed_events",
        _id("source", 256, primary_key=True),
        _id("event_id", primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        _id("topic", 249, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        _id("account_id", nullable=False),
    )
    op.create_table(
        "dispositions",
        _id("topic", 249, primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("offset", sa.BigInteger, primary_key=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        _id("event_id"),
        _id("source", 256),
    )
    op.create_table(
        "consumer_offsets",
        _id("group_id", 249, primary_key=True),
        _id("topic", 249, primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("high_offset", sa.BigInteger, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("txid", sa.BigInteger, nullable=False),
        _id("topic", 249, nullable=False),
        sa.Column("key", sa.LargeBinary),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("headers", JSON, nullable=False),
    )
    op.create_index("outbox_by_txid", "outbox", ["txid", "seq"])


def downgrade() -> None:
    for table in (
        "outbox",
        "consumer_offsets",
        "dispositions",
        "processed_events",
        "entries",
        "deficits",
        "lots",
        "accounts",
    ):
        op.drop_table(table)
