"""The outbox relay: publishes committed outbox rows to Kafka, exactly once.

Exactly once here means: a subscriber that reads with
`isolation_level=read_committed` sees every outbox row once, in `seq` order
per billing account, whatever crashes happen. How:

1. One relay at a time publishes, the holder of a PostgreSQL advisory lock.
   Its Kafka producer is transactional with a fixed `transactional_id`, so a
   relay that takes over fences the previous one: a zombie's commit fails.
2. Rows are taken in `seq` order, but only rows whose writing transaction is
   older than every transaction still running (`txid` < the snapshot's
   xmin). A batch that commits late therefore cannot be overtaken and
   skipped: its rows are simply not eligible yet.
3. One Kafka transaction carries a batch of rows *and* a checkpoint record
   (`seq_max`, `xmin`) on the checkpoint topic. The rows are deleted from the
   outbox after the commit. If the relay dies between the two, the next one
   reads the last committed checkpoint and deletes exactly the rows that were
   published (`seq <= seq_max and txid < xmin`) before it publishes more.

A subscriber that reads `read_uncommitted` may see rows of aborted
transactions; such a subscriber can de-duplicate on `x_ChargeId`, which never
changes for a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.errors import LedgerError
from service.faults import NO_FAULTS, Faults
from service.settings import Settings
from service.tables import OUTBOX

log = logging.getLogger(__name__)

CHECKPOINT_KEY = b"relay"
CHECKPOINT_SCAN_RECORDS_MAX = 10_000_000
CHECKPOINT_READ_TIMEOUT_S = 30.0


class RelayRecoveryError(LedgerError):
    """The relay could not learn what was already published; it must not
    publish until it can."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq_max: int
    xmin: int


@dataclass(slots=True)
class RelayStats:
    published_rows: int = 0
    transactions: int = 0
    last_publish_s: float = 0.0
    leader: bool = False


class Relay:
    """Moves outbox rows to Kafka while this instance holds the relay lock."""

    def __init__(
        self, engine: AsyncEngine, settings: Settings, faults: Faults = NO_FAULTS
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.faults = faults
        self.stats = RelayStats()
        self.on_published: Callable[[int], None] | None = None
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Publish until stopped; every failure backs off and starts over."""
        failures = 0
        while not self._stopping.is_set():
            try:
                async with self._leadership() as leader:
                    if not leader:
                        await self._sleep(1.0)
                        continue
                    failures = 0
                    await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                backoff_s = min(0.2 * 2**failures, 10.0)
                log.warning(
                    "relay failed, starting over",
                    extra={"error": repr(error)[:300], "backoff_s": backoff_s},
                )
                await self._sleep(backoff_s)
        log.info("relay stopped", extra={"published_rows": self.stats.published_rows})

    @contextlib.asynccontextmanager
    async def _leadership(self) -> AsyncIterator[bool]:
        """Hold the advisory lock on a dedicated connection while leading."""
        async with self.engine.connect() as conn:
            got = (
                await conn.execute(
                    sa.select(
                        sa.func.pg_try_advisory_lock(self.settings.relay_lock_key)
                    )
                )
            ).scalar_one()
            await conn.commit()
            self.stats.leader = bool(got)
            try:
                yield bool(got)
            finally:
                self.stats.leader = False
                if got:
                    with contextlib.suppress(Exception):
                        await conn.execute(
                            sa.select(
                                sa.func.pg_advisory_unlock(self.settings.relay_lock_key)
                            )
                        )
                        await conn.commit()

    async def _lead(self) -> None:
        producer = self._producer()
        await producer.start()
        try:
            log.info(
                "relay leading", extra={"transactional_id": self._transactional_id}
            )
            checkpoint = await self._last_checkpoint()
            if checkpoint is not None:
                deleted = await self._delete_published(checkpoint)
                log.info(
                    "relay recovered",
                    extra={"seq_max": checkpoint.seq_max, "deleted_rows": deleted},
                )
            while not self._stopping.is_set():
                published = await self._publish_batch(producer)
                if not published:
                    await self._sleep(self.settings.relay_poll_interval_ms / 1000)
        finally:
            await producer.stop()

    @property
    def _transactional_id(self) -> str:
        return f"{self.settings.group_id}-relay"

    def _producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            client_id=f"{self.settings.client_id}-relay",
            transactional_id=self._transactional_id,
            enable_idempotence=True,
            acks="all",
            compression_type=self.settings.relay_compression or None,
            linger_ms=self.settings.relay_linger_ms,
            max_batch_size=512 * 1024,
            max_request_size=8 * 1024 * 1024,
            transaction_timeout_ms=self.settings.relay_transaction_timeout_ms,
            request_timeout_ms=30_000,
        )

    async def _publish_batch(self, producer: AIOKafkaProducer) -> int:
        rows, xmin = await self._eligible_rows()
        if not rows:
            return 0
        started = time.perf_counter()
        await producer.begin_transaction()
        try:
            for row in rows:
                await producer.send(
                    row.topic,
                    value=row.value,
                    key=row.key,
                    headers=[
                        (name, bytes.fromhex(value)) for name, value in row.headers
                    ],
                )
            checkpoint = Checkpoint(rows[-1].seq, xmin)
            await producer.send(
                self.settings.topic_relay_checkpoints,
                key=CHECKPOINT_KEY,
                value=json.dumps(
                    {"seq_max": checkpoint.seq_max, "xmin": xmin}
                ).encode(),
            )
            self.faults.strike("relay_before_commit")
            await producer.commit_transaction()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.abort_transaction()
            raise
        self.faults.strike("relay_after_commit")
        await self._delete_published(checkpoint)
        self.stats.published_rows += len(rows)
        if self.on_published is not None:
            self.on_published(len(rows))
        self.stats.transactions += 1
        self.stats.last_publish_s = time.monotonic()
        log.debug(
            "outbox published",
            extra={
                "rows": len(rows),
                "seq_max": checkpoint.seq_max,
                "duration_s": round(time.perf_counter() - started, 4),
            },
        )
        return len(rows)

    async def _eligible_rows(self) -> tuple[list[Any], int]:
        horizon = sa.select(
            sa.cast(
                sa.cast(
                    sa.func.pg_snapshot_xmin(sa.func.pg_current_snapshot()), sa.Text
                ),
                sa.BigInteger,
            ).label("xmin")
        ).cte("horizon")
        query = (
            sa.select(
                OUTBOX.c.seq,
                OUTBOX.c.topic,
                OUTBOX.c.key,
                OUTBOX.c.value,
                OUTBOX.c.headers,
                horizon.c.xmin,
            )
            .select_from(OUTBOX.join(horizon, sa.true()))
            .where(OUTBOX.c.txid < horizon.c.xmin)
            .order_by(OUTBOX.c.seq)
            .limit(self.settings.relay_batch_rows_max)
        )
        async with self.engine.connect() as conn:
            rows = list(await conn.execute(query))
        return rows, (rows[0].xmin if rows else 0)

    async def _delete_published(self, checkpoint: Checkpoint) -> int:
        async with self.engine.begin() as conn:
            return await _delete_published(conn, checkpoint)

    async def _last_checkpoint(self) -> Checkpoint | None:
        """The checkpoint of the last committed relay transaction, if any."""
        tp = TopicPartition(self.settings.topic_relay_checkpoints, 0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            client_id=f"{self.settings.client_id}-relay-recovery",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            start = (await consumer.beginning_offsets([tp]))[tp]
            span = 16
            while True:
                first = max(start, end - span)
                found = await _last_value(consumer, tp, first, end)
                if found is not None or first == start:
                    return found
                span = min(span * 16, CHECKPOINT_SCAN_RECORDS_MAX)
        finally:
            await consumer.stop()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


async def _delete_published(conn: AsyncConnection, checkpoint: Checkpoint) -> int:
    result = await conn.execute(
        sa.delete(OUTBOX).where(
            OUTBOX.c.seq <= checkpoint.seq_max, OUTBOX.c.txid < checkpoint.xmin
        )
    )
    return result.rowcount


async def _last_value(
    consumer: AIOKafkaConsumer, tp: TopicPartition, first: int, end: int
) -> Checkpoint | None:
    """The last committed checkpoint in [first, end), reading read_committed.

    Raises:
        RelayRecoveryError: the range could not be read in time.
    """
    if end <= first:
        return None
    consumer.seek(tp, first)
    last: Checkpoint | None = None
    deadline = time.monotonic() + CHECKPOINT_READ_TIMEOUT_S
    while True:
        batch = await consumer.getmany(tp, timeout_ms=500, max_records=1000)
        for record in batch.get(tp, []):
            if record.key == CHECKPOINT_KEY and record.value:
                body = json.loads(record.value)
                last = Checkpoint(int(body["seq_max"]), int(body["xmin"]))
        # Aborted records and transaction markers are skipped, but the
        # position still moves past them.
        if await consumer.position(tp) >= end:
            return last
        if time.monotonic() > deadline:
            raise RelayRecoveryError(f"checkpoints of {tp} not readable up to {end}")
