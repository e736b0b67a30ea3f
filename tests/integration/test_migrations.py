"""The migrations build exactly the schema the models describe."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from service.database import create_engine
from service.settings import Settings
from service.tables import TABLES

pytestmark = pytest.mark.integration


async def test_a_migrated_database_matches_the_models(postgres_database: str) -> None:
    """A model change without its migration (or the reverse) shows here, before
    `focus-ledger migrate` leaves a production database behind the code."""
    engine = create_engine(Settings(), postgres_database)

    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": False}
        )
        return list(compare_metadata(context, TABLES))

    try:
        async with engine.connect() as conn:
            found = await conn.run_sync(differences)
    finally:
        await engine.dispose()

    assert found == []
