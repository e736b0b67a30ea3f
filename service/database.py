"""Engines and schema: PostgreSQL for the service, SQLite for the replay.

Every delivery-relevant option is explicit here rather than left to a
default: the isolation level (READ COMMITTED, with correctness resting on the
offset compare-and-set, see `service.store`), a statement timeout so a stuck
database shows as an error instead of a silent hang, and a bounded pool.

PostgreSQL's schema is managed by Alembic (`focus-ledger migrate`); the
replay's throwaway SQLite store is created straight from the models.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.settings import Settings
from service.tables import TABLES

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def create_engine(settings: Settings, url: str | None = None) -> AsyncEngine:
    """An async engine for the configured (or given) database URL."""
    target = make_url(url or settings.database_url)
    if target.get_backend_name() == "sqlite":
        engine = create_async_engine(target, isolation_level="SERIALIZABLE")
        _sqlite_pragmas(engine)
        return engine
    return create_async_engine(
        target,
        isolation_level="READ COMMITTED",
        json_serializer=json_text,
        pool_size=settings.db_pool_size,
        max_overflow=2,
        pool_timeout=settings.db_statement_timeout_ms / 1000,
        pool_pre_ping=True,
        connect_args={
            "timeout": 10,
            "command_timeout": settings.db_statement_timeout_ms / 1000,
            "server_settings": {
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "application_name": settings.client_id,
            },
        },
    )


def json_text(value: object) -> str:
    """JSON columns hold rendered rows and small documents of text; orjson
    writes them several times faster than the standard library."""
    return orjson.dumps(value).decode()


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(connection: object, _: object) -> None:
        cursor = connection.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


async def create_embedded_schema(engine: AsyncEngine) -> None:
    """Create the tables of a throwaway SQLite store."""
    async with engine.begin() as conn:
        await conn.run_sync(TABLES.create_all)


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(database_url: str, revision: str = "head") -> None:
    """Bring a PostgreSQL database's schema to `revision`."""
    command.upgrade(alembic_config(database_url), revision)
    log.info("schema migrated", extra={"revision": revision})
