"""Isolated service runs for the end-to-end tests: fresh databases and topics."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from service.settings import Settings
from tests.conftest import admin_sql

SettingsFactory = Callable[..., Settings]
READ_TOKEN = "e2e:read:e2e-read-0123456789"


def free_port() -> int:
    """A loopback port nothing listens on now, for a service's HTTP API."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def isolated(
    kafka_bootstrap: str,
    postgres_url: str,
    postgres_template: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SettingsFactory]:
    """Make settings with a database, a group and output topics of their own.

    `inputs` names an earlier run whose input topics to share (a rebuild).
    """
    databases: list[str] = []

    def make(
        prices_text: str, inputs: Settings | None = None, **extra: object
    ) -> Settings:
        run_id = uuid.uuid4().hex[:8]
        name = f"focus_ledger_e2e_{run_id}"
        admin_sql(
            postgres_url, f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'
        )
        databases.append(name)
        scratch: Path = tmp_path_factory.mktemp(f"e2e-{run_id}")
        prices_path = scratch / "prices.toml"
        prices_path.write_text(prices_text)
        url = make_url(postgres_url).set(database=name).render_as_string(False)
        return Settings(
            database_url=url,
            kafka_bootstrap_servers=kafka_bootstrap,
            prices_path=prices_path,
            group_id=f"e2e-{run_id}",
            topic_purchases=inputs.topic_purchases
            if inputs
            else f"e2e-{run_id}.credits.purchases",
            topic_usage=inputs.topic_usage if inputs else f"e2e-{run_id}.usage.events",
            topic_charges=f"e2e-{run_id}.focus.charges",
            topic_dead_letter=f"e2e-{run_id}.ledger.dead-letter",
            topic_alerts=f"e2e-{run_id}.ledger.alerts",
            topic_relay_checkpoints=f"e2e-{run_id}.ledger.relay-checkpoints",
            ordering_hold_max_ms=300,
            expiry_sweep_interval_ms=500,
            api_port=free_port(),
            api_tokens=READ_TOKEN,
            **extra,  # type: ignore[arg-type]
        )

    yield make
    for name in databases:
        admin_sql(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
