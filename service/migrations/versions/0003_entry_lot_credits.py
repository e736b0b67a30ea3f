"""Journal lines record the change of their lot's credits as well.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "entries",
        sa.Column(
            "lot_credits", sa.Numeric(38, 12), nullable=False, server_default="0"
        ),
    )
    op.alter_column("entries", "lot_credits", server_default=None)


def downgrade() -> None:
    op.drop_column("entries", "lot_credits")
