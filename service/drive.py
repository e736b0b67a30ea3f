"""Driving a running service from outside, as its neighbours would.

The demo, the end-to-end tests and the fault-injection harness all start
`focus-ledger serve` as a real process, feed it by producing to its input
topics, and read what it publishes, through these helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy.engine import make_url

from service.database import migrate
from service.replay import recorded_ms
from service.settings import REPO_ROOT, Settings


async def admin_execute(database_url: str, *statements: str) -> None:
    """Run statements on the server's `postgres` database (CREATE DATABASE...)."""
    url = make_url(database_url)
    admin = await asyncpg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        database="postgres",
    )
    try:
        for statement in statements:
            await admin.execute(statement)
    finally:
        await admin.close()


async def fresh_database(settings: Settings) -> None:
    """Drop and create the settings' database, then migrate it: a clean run."""
    name = make_url(settings.database_url).database
    await admin_execute(
        settings.database_url,
        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        f'CREATE DATABASE "{name}"',
    )
    await asyncio.to_thread(migrate, settings.database_url)


def service_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a `serve` process use exactly `settings`."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"FOCUS_LEDGER_{name.upper()}"] = str(value)
    return env


def start_service(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """Start `focus-ledger serve` as its own process, logging to `log_path`."""
    with log_path.open("wb") as handle:
        # The child keeps its own copy of the descriptor.
        return subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            env={**os.environ, **service_env(settings)},
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )


def stop_service(service: subprocess.Popen[bytes]) -> int | None:
    if service.poll() is None:
        service.send_signal(signal.SIGTERM)
        try:
            return service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            return service.wait(timeout=10)
    return service.returncode


async def wait_claimed(
    settings: Settings, service: subprocess.Popen[bytes], timeout_s: float
) -> None:
    """Wait until the service owns every input partition."""
    url = make_url(settings.database_url)
    deadline = time.monotonic() + timeout_s
    wanted = 2 * settings.topic_partitions
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise RuntimeError(f"the service exited early with {service.returncode}")
        connection = await asyncpg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            database=url.database,
        )
        try:
            claimed = await connection.fetchval(
                "SELECT count(*) FROM consumer_offsets"
                " WHERE group_id = $1 AND epoch > 0",
                settings.group_id,
            )
        finally:
            await connection.close()
        if claimed >= wanted:
            return
        await asyncio.sleep(0.25)
    raise TimeoutError("the service did not claim its partitions in time")


async def produce_lines(settings: Settings, events: Path) -> dict[str, int]:
    """Produce a JSON Lines file of events to the input topics, as recorded.

    Each record's timestamp is its event's own time, as a meter that reports
    promptly would write it, so history produced today is not mistaken for
    events recorded late (see `period_close_grace_days`); or, when a line
    has one, its `recordedat` (see `service.replay.read_lines`).
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
    )
    await producer.start()
    counts = {"purchases": 0, "usage": 0}
    try:
        for line in (await asyncio.to_thread(events.read_bytes)).splitlines():
            if not line.strip():
                continue
            topic, key, written_ms = route(settings, line)
            await producer.send(topic, value=line, key=key, timestamp_ms=written_ms)
            counts["purchases" if topic == settings.topic_purchases else "usage"] += 1
        await producer.flush()
    finally:
        await producer.stop()
    return counts


def route(settings: Settings, line: bytes) -> tuple[str, bytes | None, int | None]:
    """Topic, key and record timestamp of one line of a JSON Lines file.

    Purchases and refunds go to the purchases topic, the rest to usage; a
    line that is not JSON goes to usage with no key, as poison would.
    """
    try:
        event = json.loads(line)
    except ValueError:
        return settings.topic_usage, None, None
    topic = (
        settings.topic_purchases
        if str(event.get("type", "")).startswith("credits.")
        else settings.topic_usage
    )
    subject = event.get("subject")
    written_ms = recorded_ms(line)
    if written_ms is None:
        with contextlib.suppress(TypeError, ValueError, KeyError):
            written_ms = int(datetime.fromisoformat(event["time"]).timestamp() * 1000)
    return topic, subject.encode() if isinstance(subject, str) else None, written_ms


async def read_topic(
    settings: Settings,
    topic: str,
    partitions: int,
    expected: int,
    timeout_s: float,
    service: subprocess.Popen[bytes] | None = None,
) -> list[Any]:
    """Read a topic from the start, read_committed, until `expected` records are
    in and two seconds pass without more (or the time is up, or the service
    exits)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    records: list[Any] = []
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            fresh = [record for part in batch.values() for record in part]
            records += fresh
            if fresh:
                quiet_since = time.monotonic()
            if len(records) >= expected and time.monotonic() - quiet_since > 2.0:
                break
            if service is not None and service.poll() is not None:
                break
    finally:
        await consumer.stop()
    return records
