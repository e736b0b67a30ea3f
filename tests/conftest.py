"""Where the real PostgreSQL and Kafka come from, for every test ring.

Addresses are read from `DATABASE_URL` and `KAFKA_BOOTSTRAP_SERVERS` (what
`make test` exports after starting the stack from `deploy/`). Without them,
testcontainers starts the services where a Docker engine answers. With
`CI=true` and neither, the run fails loudly instead of skipping, so a CI
that silently tested nothing cannot pass.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from testcontainers.community.kafka import KafkaContainer
from testcontainers.community.postgres import PostgresContainer
from testcontainers.core.docker_client import DockerClient

from service.database import create_embedded_schema, create_engine, migrate
from service.drive import admin_execute
from service.settings import Settings

TEMPLATE = "focus_ledger_test_template"
# Files a test writes for a person to look at (screenshots); git ignores them.
ARTIFACTS = Path(__file__).parent / "artifacts"
_SESSION_STARTED_S = pytest.StashKey[float]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION_STARTED_S] = time.time()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """List the artifacts this run wrote, so the output says where to look."""
    started_s = config.stash.get(_SESSION_STARTED_S, None)
    if started_s is None or not ARTIFACTS.is_dir():
        return
    written = sorted(
        path
        for path in ARTIFACTS.rglob("*")
        if path.is_file() and path.stat().st_mtime >= started_s
    )
    if not written:
        return
    terminalreporter.section("artifacts written")
    for path in written:
        terminalreporter.write_line(str(path.relative_to(config.rootpath)))


def _docker_engine() -> bool:
    try:
        DockerClient().client.ping()
    except Exception:
        return False
    return True


def _unavailable(what: str, variable: str) -> None:
    message = f"no {what}: set {variable} (make test does) or run a Docker engine"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    if not _docker_engine():
        _unavailable("PostgreSQL", "DATABASE_URL")
    with PostgresContainer("postgres:15", driver="asyncpg") as container:
        yield container.get_connection_url()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if servers:
        yield servers
        return
    if not _docker_engine():
        _unavailable("Kafka broker", "KAFKA_BOOTSTRAP_SERVERS")
    with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
        yield container.get_bootstrap_server()


def admin_sql(url: str, *statements: str) -> None:
    """Run statements on the server's `postgres` database.

    Fixtures that other fixtures request by name must be synchronous, so the
    asyncpg work runs on an event loop of its own, in a worker thread.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, admin_execute(url, *statements)).result()


@pytest.fixture(scope="session")
def postgres_template(postgres_url: str) -> str:
    """A migrated database that each test database is copied from."""
    admin_sql(
        postgres_url,
        f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)',
        f'CREATE DATABASE "{TEMPLATE}"',
    )
    url = make_url(postgres_url).set(database=TEMPLATE).render_as_string(False)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(migrate, url).result()
    return TEMPLATE


@pytest.fixture
def postgres_database(postgres_url: str, postgres_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test; dropped afterwards."""
    name = f"focus_ledger_test_{uuid.uuid4().hex[:12]}"
    admin_sql(postgres_url, f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    yield make_url(postgres_url).set(database=name).render_as_string(False)
    admin_sql(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(
    request: pytest.FixtureRequest, tmp_path: object
) -> AsyncIterator[AsyncEngine]:
    """The store under test: the embedded SQLite and the real PostgreSQL."""
    settings = Settings()
    if request.param == "sqlite":
        created = create_engine(settings, f"sqlite+aiosqlite:///{tmp_path}/ledger.db")
        await create_embedded_schema(created)
    else:
        url = request.getfixturevalue("postgres_database")
        created = create_engine(settings, url)
    yield created
    await created.dispose()
