"""Journal lines name their billing period ("2025-04", in the account's zone).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("entries", sa.Column("billing_period", sa.String(7), nullable=True))
    op.create_index(
        "entries_by_period_label", "entries", ["billing_period", "account_id"]
    )


def downgrade() -> None:
    op.drop_index("entries_by_period_label", table_name="entries")
    op.drop_column("entries", "billing_period")
