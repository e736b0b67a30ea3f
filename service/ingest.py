"""The Kafka side of the service: a FastStream batch subscriber on aiokafka.

Delivery is decided here, explicitly, never by a library default:

- The consumer commits nothing to Kafka (`AckPolicy.MANUAL`, auto-commit
  off). Offsets live in PostgreSQL, written in the batch transaction, and on
  every partition assignment the consumer seeks to them. Kafka's own
  committed offsets are never read.
- Input is read `read_committed`, from the earliest offset when PostgreSQL
  has none (a new group starts at the beginning of the topics).
- Partitions are handed out by the range assignor, so one instance owns
  partition N of both input topics (see `service.topics`).
- One batch is booked at a time (a lock shared with the rebalance listener
  and the ticker), so a revocation waits for the batch in flight.

A failed batch rolls back; the consumer then seeks back to the committed
offsets and the batch is read again, after a bounded backoff. After
`batch_retries_max` consecutive failures, or on a broken invariant, the
process stops with an error instead of spinning: its orchestrator restarts
it, and it continues where PostgreSQL says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import sqlalchemy as sa
import uvicorn
from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import WithJsonSchema
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.errors import InvariantError
from ledger.events import RawRecord
from ledger.ordering import Position
from ledger.prices import PriceList
from service.api import ServiceProbe, build_api
from service.bookkeeper import COUNTERS, BatchReport, Bookkeeper, InputRecord
from service.faults import Faults
from service.metrics import LagCollector, Metrics
from service.relay import Relay
from service.schemas import one_of, topic_payloads
from service.settings import Settings
from service.store import FencedError
from service.tables import OUTBOX
from service.topics import TopicLayoutError, ensure_topics

log = logging.getLogger(__name__)

# One Kafka record of either input topic, as the contract describes it.
_PAYLOADS = topic_payloads()
InputEvents = Annotated[
    Any,
    WithJsonSchema(
        one_of(_PAYLOADS["purchases"], _PAYLOADS["usage"]), mode="validation"
    ),
]

EXIT_FATAL = 70
PROGRESS_LOG_INTERVAL_S = 60.0


@dataclass(slots=True)
class IngestState:
    """What readiness and metrics need to know, updated as batches run."""

    started: bool = False
    fatal: str | None = None
    consecutive_failures: int = 0
    batches: int = 0
    last_batch_s: float = 0.0
    last_report: BatchReport | None = None
    totals: dict[str, int] = field(default_factory=dict)


class _PartitionOwner(ConsumerRebalanceListener):  # type: ignore[misc]
    """Claims partitions in PostgreSQL and seeks to their stored offsets.

    aiokafka logs and swallows an exception raised here; a failure is
    therefore recorded and handled by the next batch, which claims any
    partition it reads without owning it.
    """

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        async with self.ingest.lock:
            self.ingest.bookkeeper.revoke((tp.topic, tp.partition) for tp in revoked)
            self.ingest._paused -= {(tp.topic, tp.partition) for tp in revoked}
        log.info("partitions revoked", extra={"partitions": _names(revoked)})

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.ingest.joined = True
        self.ingest._joined_s = time.monotonic()
        async with self.ingest.lock:
            try:
                await self.ingest.claim([(tp.topic, tp.partition) for tp in assigned])
            except Exception as error:
                log.error(
                    "claiming partitions failed; the next batch retries",
                    extra={"partitions": _names(assigned), "error": repr(error)[:300]},
                )


class Ingest(ServiceProbe):
    """The service: subscriber, ticker and relay around one bookkeeper."""

    def __init__(
        self, settings: Settings, prices: PriceList, engine: AsyncEngine
    ) -> None:
        self.settings = settings
        self.engine = engine
        faults = Faults(settings.fault_points, settings.fault_seed)
        self.bookkeeper = Bookkeeper(engine, prices, settings, faults=faults)
        self.relay = Relay(engine, settings, faults)
        self.relay.on_published = self._published
        self.lock = asyncio.Lock()
        self.state = IngestState()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._api: _ApiServer | None = None
        self._paused: set[tuple[str, int]] = set()
        self._backlog: int | None = None
        self._joined_s = time.monotonic()
        self.joined = False
        self.metrics = Metrics()
        self.metrics.watch(LagCollector(self._lag, lambda: self._backlog))
        self._last_sweep_s = 0.0
        self._last_progress_s = time.monotonic()
        self.broker = KafkaBroker(
            settings.kafka_bootstrap_servers,
            client_id=settings.client_id,
            allow_auto_create_topics=False,
            graceful_timeout=settings.shutdown_grace_s,
            request_timeout_ms=30_000,
            logger=logging.getLogger("service.faststream"),
            log_level=logging.DEBUG,
        )
        self.subscriber = self.broker.subscriber(
            settings.topic_purchases,
            settings.topic_usage,
            group_id=settings.group_id,
            batch=True,
            max_records=settings.batch_records_max,
            batch_timeout_ms=settings.batch_wait_ms,
            ack_policy=AckPolicy.MANUAL,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            partition_assignment_strategy=(RangePartitionAssignor,),
            listener=_PartitionOwner(self),
            session_timeout_ms=settings.consumer_session_timeout_ms,
            heartbeat_interval_ms=settings.consumer_heartbeat_interval_ms,
            max_poll_interval_ms=settings.consumer_max_poll_interval_ms,
            max_partition_fetch_bytes=settings.consumer_fetch_partition_bytes_max,
            decoder=_undecoded,
            title="ledger-input",
            description="Credit purchases, refunds and usage, as CloudEvents 1.0.",
        )
        self.subscriber(self.on_batch)
        self._declare_outputs()
        self.app = FastStream(
            self.broker,
            on_startup=[self._on_startup],
            after_startup=[self._after_startup],
            on_shutdown=[self._on_shutdown],
            after_shutdown=[self._after_shutdown],
        )

    async def on_batch(self, contract: InputEvents, message: KafkaMessage) -> None:
        """Book one fetched batch; never raises into FastStream's loop.

        The bookkeeper decodes the raw records itself, so `contract` (what
        FastStream decoded) is nothing; its annotation documents what the
        records hold, for the AsyncAPI document.
        """
        records = [_input_record(record) for record in message.raw_message]
        async with self.lock:
            await self._book(records)
            self._pace()

    def _pace(self) -> None:
        """Bound what is read ahead: while the ordering buffer holds more than
        `ordering_read_ahead_events_max` events, stop fetching the partitions
        that run ahead of their other topic, and fetch them again below half.

        A backlog read from the start would otherwise be decoded and held
        almost whole while the lagging topic catches up. The lagging topic
        is never paused, so what is held is always released in the end.
        """
        consumer = self.subscriber.consumer
        if consumer is None:
            return
        limit = self.settings.ordering_read_ahead_events_max
        held = self.bookkeeper.held
        ahead = self.bookkeeper.sequencer.running_ahead()
        if held >= limit:
            wanted = ahead
        elif held < limit // 2:
            wanted = set()
        else:
            wanted = self._paused & ahead
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        wanted &= assigned
        stop = wanted - self._paused
        go = (self._paused - wanted) & assigned
        if stop:
            consumer.pause(*(TopicPartition(t, p) for t, p in sorted(stop)))
        if go:
            consumer.resume(*(TopicPartition(t, p) for t, p in sorted(go)))
        if stop or go:
            log.debug(
                "read-ahead paced",
                extra={"held": held, "paused": _names_of(wanted)},
            )
        self._paused = wanted

    def _declare_outputs(self) -> None:
        """The topics the relay writes, declared to FastStream for the AsyncAPI
        document only: the relay publishes through a transactional aiokafka
        producer of its own (see `service.relay`), never through these."""
        payloads = topic_payloads()
        outputs = (
            (
                self.settings.topic_charges,
                "focus-charges",
                "FOCUS 1.2 rows, one JSON object each, keyed by billing account; "
                "exactly once for read_committed subscribers.",
                payloads["charges"],
            ),
            (
                self.settings.topic_alerts,
                "ledger-alerts",
                "credits.balance_low and credits.expiring CloudEvents, keyed by "
                "billing account.",
                payloads["alerts"],
            ),
            (
                self.settings.topic_dead_letter,
                "ledger-dead-letter",
                "Refused input records: the original value, key and headers, with "
                "dlq.reason, dlq.detail, dlq.topic, dlq.partition, dlq.offset and "
                "dlq.timestamp headers.",
                {"description": "The refused record's original bytes."},
            ),
        )
        for topic, title, description, payload in outputs:
            self.broker.publisher(
                topic,
                title=title,
                description=description,
                schema=Annotated[Any, WithJsonSchema(payload)],
            )

    async def claim(self, partitions: list[tuple[str, int]]) -> None:
        """Claim partitions and point the consumer at their stored offsets."""
        offsets = await self.bookkeeper.assign(partitions)
        consumer = self._consumer()
        for (topic, partition), offset in offsets.items():
            consumer.seek(TopicPartition(topic, partition), offset)

    async def _book(self, records: list[InputRecord]) -> None:
        owned = self.bookkeeper.epochs
        foreign = {
            (r.position.topic, r.position.partition)
            for r in records
            if (r.position.topic, r.position.partition) not in owned
        }
        if foreign:
            # Assignment happened but its claim failed: claim now and read
            # these partitions again from their stored offsets.
            records = [
                r
                for r in records
                if (r.position.topic, r.position.partition) not in foreign
            ]
            try:
                await self.claim(sorted(foreign))
            except Exception as error:
                await self._failed(error)
                return
        try:
            report = await self.bookkeeper.book(
                records, highwaters=self._highwaters(), sweep=self._sweep_due()
            )
        except FencedError as error:
            log.warning("batch fenced; partitions moved", extra={"error": str(error)})
            self._rewind()
            return
        except InvariantError as error:
            self._fatal(f"invariant broken: {error}")
            return
        except Exception as error:
            await self._failed(error)
            return
        self._record(report)

    def _published(self, records: int) -> None:
        self.metrics.rows_published.inc(records)

    def _record(self, report: BatchReport) -> None:
        if report.committed:
            self.metrics.observe_batch(
                report.by_topic,
                report.records,
                report.duration_s,
                report.recorded,
                report.alerts,
                report.held,
            )
        self.state.consecutive_failures = 0
        self.state.batches += report.committed
        self.state.last_batch_s = time.monotonic()
        self.state.last_report = report
        for name in COUNTERS:
            self.state.totals[name] = self.state.totals.get(name, 0) + getattr(
                report, name
            )
        if report.committed:
            log.debug(
                "batch committed",
                extra={
                    "offsets": {
                        f"{t}[{p}]": (progress.next_offset, progress.high_offset)
                        for (t, p), progress in self.bookkeeper.committed.items()
                    },
                    "batch_size": report.records,
                    "applied": report.applied,
                    "charges": report.charges,
                    "dead_letters": report.dead_letters,
                    "held": report.held,
                    "duration_s": round(report.duration_s, 4),
                },
            )

    async def _failed(self, error: Exception) -> None:
        self.metrics.batch_failures.inc()
        self.state.consecutive_failures += 1
        failures = self.state.consecutive_failures
        log.error(
            "batch failed; rewinding to the committed offsets",
            extra={"error": repr(error)[:500], "consecutive_failures": failures},
        )
        with contextlib.suppress(Exception):
            self._rewind()
        if failures > self.settings.batch_retries_max:
            self._fatal(f"{failures} consecutive batch failures; last: {error!r}")
            return
        backoff_s = min(
            self.settings.batch_retry_backoff_ms / 1000 * 2 ** (failures - 1), 30.0
        )
        await asyncio.sleep(backoff_s)

    def _rewind(self) -> None:
        consumer = self._consumer()
        for (topic, partition), offset in self.bookkeeper.rewind().items():
            consumer.seek(TopicPartition(topic, partition), offset)

    def _fatal(self, reason: str) -> None:
        log.critical("stopping: %s", reason, extra={"reason": reason})
        self.state.fatal = reason
        self.app.exit()

    def _consumer(self) -> Any:
        consumer = self.subscriber.consumer
        if consumer is None:
            raise RuntimeError("the consumer is not running")
        return consumer

    def _highwaters(self) -> dict[tuple[str, int], int | None]:
        """Per owned partition, the end of what may be read (read_committed).

        The bookkeeper compares it with what it has read: a partition read to
        its end may be waited out by the ordering hold and may sweep expiries;
        one with a backlog may not.
        """
        consumer = self.subscriber.consumer
        if consumer is None:
            return {}
        return {
            (topic, partition): consumer.last_stable_offset(
                TopicPartition(topic, partition)
            )
            for topic, partition in self.bookkeeper.committed
        }

    def _sweep_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_sweep_s < self.settings.expiry_sweep_interval_ms / 1000:
            return False
        self._last_sweep_s = now
        return True

    async def _tick(self) -> None:
        """Release held events and sweep expiries when no records arrive."""
        interval_s = self.settings.tick_interval_ms / 1000
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval_s)
            if self._stopping.is_set() or self.lock.locked():
                continue
            if not self.bookkeeper.epochs:
                continue
            async with self.lock:
                await self._book([])
                self._pace()
            self._report_progress()

    def _report_progress(self) -> None:
        """An INFO line per minute with where each owned partition stands."""
        now = time.monotonic()
        if now - self._last_progress_s < PROGRESS_LOG_INTERVAL_S:
            return
        self._last_progress_s = now
        consumer = self.subscriber.consumer
        partitions = {}
        for (topic, partition), progress in sorted(self.bookkeeper.committed.items()):
            highwater = (
                consumer.highwater(TopicPartition(topic, partition))
                if consumer
                else None
            )
            partitions[f"{topic}[{partition}]"] = {
                "next_offset": progress.next_offset,
                "high_offset": progress.high_offset,
                "highwater": highwater,
            }
        log.info(
            "progress",
            extra={
                "partitions": partitions,
                "held": self.bookkeeper.held,
                **self.state.totals,
            },
        )

    async def _on_startup(self) -> None:
        """Wait, boundedly, for the broker: a service restarted while Kafka is
        down should come up when Kafka does, not crash in a loop."""
        deadline = time.monotonic() + self.settings.startup_wait_s
        attempt = 0
        while True:
            attempt += 1
            try:
                counts = await ensure_topics(self.settings)
                break
            except TopicLayoutError:
                raise
            except Exception as error:
                if time.monotonic() > deadline:
                    raise
                log.warning(
                    "waiting for the broker",
                    extra={"attempt": attempt, "error": repr(error)[:200]},
                )
                await asyncio.sleep(min(2.0 * attempt, 10.0))
        log.info("service starting", extra={"partitions": counts})

    async def _after_startup(self) -> None:
        self._tasks = [
            asyncio.create_task(self._tick(), name="ticker"),
            asyncio.create_task(self.relay.run(), name="relay"),
            asyncio.create_task(self._sample_backlog(), name="backlog"),
        ]
        if self.settings.api_port:
            self._api = _ApiServer(
                uvicorn.Config(
                    build_api(self.engine, self.settings, self.metrics, self),
                    host=self.settings.api_host,
                    port=self.settings.api_port,
                    log_config=None,
                    access_log=False,
                    lifespan="off",
                )
            )
            self._tasks.append(asyncio.create_task(self._serve_api(), name="api"))
        self.state.started = True
        log.info(
            "service started",
            extra={
                "group_id": self.settings.group_id,
                "api": f"{self.settings.api_host}:{self.settings.api_port}"
                if self.settings.api_port
                else None,
            },
        )

    async def _on_shutdown(self) -> None:
        self._stopping.set()
        if self._api is not None:
            self._api.should_exit = True
        log.info("service stopping", extra={"held": self.bookkeeper.held})

    async def _serve_api(self) -> None:
        """Serve HTTP until stopped. uvicorn exits the process when it cannot
        bind; here that is logged and the consumer goes on without an API."""
        if self._api is None:
            return
        try:
            await self._api.serve()
        except SystemExit:
            log.error(
                "the HTTP API could not start",
                extra={"api": f"{self.settings.api_host}:{self.settings.api_port}"},
            )

    def readiness(self) -> dict[str, Any]:
        """The consumer's side of `/readyz`."""
        consumer = self.subscriber.consumer
        waiting = any(self._lag().values())
        idle_s = time.monotonic() - max(self.state.last_batch_s, self._joined_s)
        return {
            "started": self.state.started,
            "fatal": self.state.fatal,
            "group_joined": self.joined,
            "partitions": sorted(f"{t}[{p}]" for t, p in self.bookkeeper.epochs),
            "consecutive_failures": self.state.consecutive_failures,
            "stuck": waiting and idle_s > self.settings.readiness_stuck_after_s,
            "consumer": "running" if consumer is not None else "stopped",
        }

    def ready(self) -> bool:
        state = self.readiness()
        return bool(
            state["started"]
            and state["group_joined"]
            and not state["fatal"]
            and not state["stuck"]
            and state["consecutive_failures"] == 0
        )

    def _lag(self) -> dict[tuple[str, int], int]:
        """Records not yet committed, per owned input partition."""
        lag = {}
        for tp, highwater in self._highwaters().items():
            progress = self.bookkeeper.committed.get(tp)
            if highwater is not None and progress is not None:
                lag[tp] = max(0, highwater - progress.next_offset)
        return lag

    async def _sample_backlog(self) -> None:
        """Count the outbox now and then, for the backlog gauge."""
        while not self._stopping.is_set():
            with contextlib.suppress(Exception):
                async with self.engine.connect() as conn:
                    self._backlog = (
                        await conn.execute(
                            sa.select(sa.func.count()).select_from(OUTBOX)
                        )
                    ).scalar_one()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=5.0)

    async def _after_shutdown(self) -> None:
        # The broker has stopped and the last batch is committed; give the
        # relay a bounded moment to publish what that batch wrote.
        await asyncio.sleep(min(1.0, self.settings.shutdown_grace_s))
        self.relay.stop()
        _, pending = await asyncio.wait(
            self._tasks, timeout=self.settings.shutdown_grace_s
        )
        for task in pending:
            task.cancel()
        await self.engine.dispose()
        log.info("service stopped", extra=dict(self.state.totals))


class _ApiServer(uvicorn.Server):
    """uvicorn, minus its own signal handlers: FastStream owns SIGTERM here and
    stops the API with the rest of the service."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _undecoded(message: Any) -> None:
    """The bookkeeper decodes records itself, from bytes, without floats."""
    return None


def _input_record(record: ConsumerRecord) -> InputRecord:
    return InputRecord(
        Position(record.topic, record.partition, record.offset),
        RawRecord(
            value=record.value,
            key=record.key,
            headers=tuple(record.headers or ()),
            timestamp_ms=record.timestamp,
        ),
    )


def _names(partitions: Sequence[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)


def _names_of(partitions: set[tuple[str, int]]) -> list[str]:
    return sorted(f"{topic}[{partition}]" for topic, partition in partitions)
