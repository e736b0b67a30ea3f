"""Configuration of the service, the CLI and the replay: one model, one source.

Every setting is read from the environment (prefix `FOCUS_LEDGER_`; the
database and broker addresses also from the conventional `DATABASE_URL` and
`KAFKA_BOOTSTRAP_SERVERS`). Names carry their unit. `docs/operations.md`
lists them all with defaults; `focus-ledger config` prints the values in use
with secrets masked.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger.accounts import Rules
from ledger.periods import ChargeGrain

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """All knobs, with the defaults a single small deployment wants."""

    model_config = SettingsConfigDict(
        env_prefix="FOCUS_LEDGER_", extra="ignore", frozen=True
    )

    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:15432/focus_ledger",
        validation_alias=AliasChoices("FOCUS_LEDGER_DATABASE_URL", "DATABASE_URL"),
    )
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:19092",
        validation_alias=AliasChoices(
            "FOCUS_LEDGER_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"
        ),
    )
    prices_path: Path = REPO_ROOT / "examples" / "prices.toml"

    group_id: str = "focus-ledger"
    client_id: str = "focus-ledger"
    topic_purchases: str = "credits.purchases"
    topic_usage: str = "usage.events"
    topic_charges: str = "focus.charges"
    topic_dead_letter: str = "ledger.dead-letter"
    topic_relay_checkpoints: str = "ledger.relay-checkpoints"
    topic_partitions: int = Field(6, ge=1, le=1024)
    topic_replication_factor: int = Field(1, ge=1, le=7)

    ordering_window_ms: int = Field(1000, ge=0, le=3_600_000)
    ordering_hold_max_ms: int = Field(1000, ge=0, le=600_000)
    ordering_held_events_max: int = Field(200_000, ge=1_000)

    batch_records_max: int = Field(2000, ge=1, le=100_000)
    batch_wait_ms: int = Field(100, ge=1, le=10_000)
    tick_interval_ms: int = Field(250, ge=10, le=60_000)
    expiry_sweep_lots_max: int = Field(500, ge=1, le=100_000)
    expiry_sweep_interval_ms: int = Field(5000, ge=100, le=3_600_000)
    expiry_idle_s: float = Field(300.0, ge=1.0)
    event_bytes_max: int = Field(256 * 1024, ge=1024, le=8 * 1024 * 1024)
    event_future_skew_max_s: int = Field(86_400, ge=0)
    dead_letter_value_bytes_max: int = Field(1024 * 1024, ge=1024)

    charge_grain: ChargeGrain = ChargeGrain.HOUR
    overage_invoice_pattern: str | None = None

    consumer_session_timeout_ms: int = Field(10_000, ge=1000)
    consumer_heartbeat_interval_ms: int = Field(3_000, ge=100)
    consumer_max_poll_interval_ms: int = Field(300_000, ge=10_000)
    consumer_fetch_partition_bytes_max: int = Field(1024 * 1024, ge=64 * 1024)

    batch_retries_max: int = Field(5, ge=0, le=100)
    batch_retry_backoff_ms: int = Field(500, ge=10, le=60_000)
    db_statement_timeout_ms: int = Field(30_000, ge=100)
    db_pool_size: int = Field(5, ge=1, le=100)

    relay_batch_rows_max: int = Field(2000, ge=1, le=50_000)
    relay_poll_interval_ms: int = Field(50, ge=1, le=10_000)
    relay_linger_ms: int = Field(5, ge=0, le=1000)
    relay_compression: str = "lz4"
    relay_transaction_timeout_ms: int = Field(60_000, ge=1000)
    relay_lock_key: int = 0x666F637573  # "focus", the advisory lock of the relay

    fault_points: str = ""
    fault_seed: int | None = None

    startup_wait_s: float = Field(120.0, ge=0, le=3600)
    shutdown_grace_s: float = Field(10.0, ge=0.1, le=300)
    log_level: str = "INFO"
    log_format: str = Field("json", pattern="^(json|text)$")

    @property
    def ordering_window(self) -> timedelta:
        return timedelta(milliseconds=self.ordering_window_ms)

    @property
    def rules(self) -> Rules:
        return Rules(
            charge_grain=self.charge_grain,
            overage_invoice_pattern=self.overage_invoice_pattern,
        )

    @property
    def input_topics(self) -> tuple[str, str]:
        return (self.topic_purchases, self.topic_usage)
