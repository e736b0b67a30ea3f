"""Journal rows as JSON text; one index fewer on the journal.

A journal line's FOCUS row is stored as `json` (the text as written, columns
in spec order) instead of `jsonb`: nothing queries inside it, and PostgreSQL
stores text several times faster than it builds the binary form. The index
on (billing_period_start, account_id) served no query (reports select by the
billing period label) and is dropped.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("entries_by_period", table_name="entries")
    op.alter_column(
        "entries",
        "charge",
        type_=postgresql.JSON(none_as_null=True),
        postgresql_using="charge::json",
    )


def downgrade() -> None:
    op.alter_column(
        "entries",
        "charge",
        type_=postgresql.JSONB(none_as_null=True),
        postgresql_using="charge::jsonb",
    )
    op.create_index(
        "entries_by_period", "entries", ["billing_period_start", "account_id"]
    )
