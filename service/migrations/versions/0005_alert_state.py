"""Alert state: what an account was last told, and which lots were announced.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("alert_state", postgresql.JSONB(none_as_null=True), nullable=True),
    )
    op.add_column(
        "lots",
        sa.Column(
            "expiry_alerted", sa.Boolean(), nullable=False, server_default=sa.false()
        ),
    )


def downgrade() -> None:
    op.drop_column("lots", "expiry_alerted")
    op.drop_column("accounts", "alert_state")
