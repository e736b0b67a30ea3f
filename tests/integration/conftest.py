"""A ledger to ask questions of: the demo month, booked once per session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from sqlalchemy.engine import make_url

from service.replay import replay
from service.settings import REPO_ROOT, Settings
from tests.conftest import admin_sql
from tests.factories import sample_prices

DEMO_EVENTS = REPO_ROOT / "examples" / "events.jsonl"
DEMO_END = "2026-12-01T00:00:00Z"
DEMO_DATABASE = "focus_ledger_test_demo_month"


@pytest.fixture(scope="session")
async def demo_month_url(
    postgres_url: str, postgres_template: str
) -> AsyncIterator[str]:
    """A PostgreSQL ledger holding the demo month (`examples/events.jsonl`),
    booked by the file replay; tests only read it."""
    admin_sql(
        postgres_url,
        f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)',
        f'CREATE DATABASE "{DEMO_DATABASE}" TEMPLATE "{postgres_template}"',
    )
    url = make_url(postgres_url).set(database=DEMO_DATABASE).render_as_string(False)
    await replay(
        DEMO_EVENTS,
        sample_prices(),
        Settings(ordering_hold_max_ms=0),
        database_url=url,
        as_of=datetime.fromisoformat(DEMO_END),
    )
    yield url
    admin_sql(postgres_url, f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)')
