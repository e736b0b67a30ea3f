"""The batch transaction: input records in, ledger state and outbox rows out.

`Bookkeeper.book` is the one place where a batch is accounted for, for the
Kafka consumer and for the file replay alike. Its steps:

1. Decode every record. A record that is not a valid event becomes a dead
   letter; a valid event goes to the sequencer, which releases events in
   event-time order (see `ledger.ordering`).
2. Begin one database transaction and compare-and-set the offsets of every
   owned input partition. If another instance has claimed one, the batch
   rolls back here, having changed nothing (`FencedError`).
3. Look the released events up by (source, id). An event applied before is
   skipped when it is the same record read again after a restart, counted as
   a duplicate when it is a copy, and dead-lettered as a conflict when it has
   other content.
4. Load the accounts concerned and apply each event with the pure core. A
   business rejection (refund of an unknown purchase, say) is a dead letter.
5. Expire the lots of caught-up partitions that are due by the sweep cutoff.
   The cutoff never runs ahead of the partition's own data (its latest event
   time less the ordering window), so a backlog read hours late expires lots
   exactly where a live run would have: between the same two events. Only a
   partition read to its end and silent for `expiry_idle_s` sweeps by the
   wall clock alone.
6. Write accounts, lots, deficits, journal, processed events, dispositions,
   outbox rows and offsets; check the lots the batch closed; commit.

Any exception rolls the whole batch back. The caller then rewinds: it drops
what it holds in memory and reads again from the committed offsets, which is
always safe because steps 2-6 are one transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.accounts import Account, Entry, EntryKind, Rules, apply, expire_due
from ledger.alerts import Alert, AlertRules, watch
from ledger.events import (
    TOPIC_TYPES,
    Event,
    EventType,
    RawRecord,
    Reason,
    RefundData,
    Rejection,
    decode,
)
from ledger.ordering import Held, Position, Sequencer
from ledger.prices import PriceList
from service.faults import NO_FAULTS, Faults
from service.records import (
    alert_record,
    charge_record,
    dead_letter_record,
    rendered,
)
from service.settings import Settings
from service.store import (
    Applied,
    Changes,
    Claim,
    DispositionRecord,
    Progress,
    Store,
    TopicPartition,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One record read from an input, with where it was read."""

    position: Position
    raw: RawRecord


@dataclass(slots=True)
class BatchReport:
    """What one batch did; the counters feed logs and metrics."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    conflicts: int = 0
    dead_letters: int = 0
    redelivered: int = 0
    refetched: int = 0
    late: int = 0
    charges: int = 0
    expired_lots: int = 0
    held: int = 0
    committed: bool = False
    duration_s: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    by_topic: dict[str, dict[str, int]] = field(default_factory=dict)
    recorded: list[datetime] = field(default_factory=list)
    alerts: dict[str, int] = field(default_factory=dict)

    def count(self, topic: str, outcome: str) -> None:
        outcomes = self.by_topic.setdefault(topic, {})
        outcomes[outcome] = outcomes.get(outcome, 0) + 1


COUNTERS = (
    "records",
    "applied",
    "duplicates",
    "conflicts",
    "dead_letters",
    "redelivered",
    "refetched",
    "late",
    "charges",
    "expired_lots",
)


class Bookkeeper:
    """Accounts for batches of input records on one store."""

    def __init__(
        self,
        engine: AsyncEngine,
        prices: PriceList,
        settings: Settings,
        *,
        clock_s: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        topic_types: dict[str, frozenset[EventType]] | None = None,
        replay_topic: str = "replay",
        faults: Faults = NO_FAULTS,
    ) -> None:
        self.engine = engine
        self.prices = prices
        self.settings = settings
        self.rules: Rules = settings.rules
        self.alert_rules: AlertRules = settings.alert_rules
        self.store = Store(settings.group_id)
        self.clock_s = clock_s
        self.wall = wall
        self.topic_types = (
            topic_types
            if topic_types is not None
            else {
                settings.topic_purchases: TOPIC_TYPES["purchases"],
                settings.topic_usage: TOPIC_TYPES["usage"],
            }
        )
        self.replay_topic = replay_topic
        self.sequencer = self._new_sequencer()
        self.faults = faults
        self.epochs: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, Progress] = {}
        self._last_record_s: dict[int, float] = {}

    def _new_sequencer(self) -> Sequencer:
        return Sequencer(
            tuple(self.topic_types) or (self.replay_topic,),
            self.settings.ordering_window,
            self.settings.ordering_hold_max_ms / 1000,
            self.settings.ordering_held_events_max,
        )

    async def assign(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Claim input partitions; returns the offset to read each from."""
        async with self.engine.begin() as conn:
            claims: dict[TopicPartition, Claim] = await self.store.claim(
                conn, partitions
            )
        now_s = self.clock_s()
        for tp, claim in claims.items():
            self.epochs[tp] = claim.epoch
            self.committed[tp] = claim.progress
            self._last_record_s.setdefault(tp[1], now_s)
            if claim.progress.time_max is not None:
                self.sequencer.seed(tp[0], tp[1], claim.progress.time_max)
        log.info(
            "partitions claimed",
            extra={
                "partitions": sorted(f"{t}[{p}]" for t, p in claims),
                "epochs": {f"{t}[{p}]": c.epoch for (t, p), c in claims.items()},
            },
        )
        return {tp: claim.progress.next_offset for tp, claim in claims.items()}

    def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget partitions another instance will own; nothing is committed."""
        revoked = set(partitions)
        for tp in revoked:
            self.epochs.pop(tp, None)
            self.committed.pop(tp, None)
        self.sequencer.drop({partition for _, partition in revoked})

    def rewind(self) -> dict[TopicPartition, int]:
        """After a failed batch: drop held events, return offsets to seek to."""
        self.sequencer = self._new_sequencer()
        for (topic, partition), progress in self.committed.items():
            if progress.time_max is not None:
                self.sequencer.seed(topic, partition, progress.time_max)
        return {tp: progress.next_offset for tp, progress in self.committed.items()}

    @property
    def held(self) -> int:
        return len(self.sequencer)

    async def book(
        self,
        records: Sequence[InputRecord],
        *,
        highwaters: Mapping[TopicPartition, int | None] | None = None,
        sweep: bool = False,
        sweep_partitions: Iterable[int] = (),
        sweep_cutoff: datetime | None = None,
        flush: bool = False,
    ) -> BatchReport:
        """Account for one batch in one transaction (see the module docstring)."""
        started = time.perf_counter()
        report = BatchReport(records=len(records))
        now_s = self.clock_s()

        rejected = self._decode(records, now_s, report)
        read_to_end = self._read_to_end(highwaters)
        released = self.sequencer.release(now_s, read_to_end=read_to_end, flush=flush)
        sweeping = set(sweep_partitions)
        if sweep:
            sweeping |= self._partitions_read_to_end(read_to_end)
        sweep_cutoffs = self._sweep_cutoffs(sweeping, sweep_cutoff, now_s)
        offsets = self._offsets()
        if not (released or rejected or sweep_cutoffs) and all(
            self.committed.get(tp) == value for tp, value in offsets.items()
        ):
            report.held = self.held
            return report

        async with self.engine.begin() as conn:
            await self.store.fence(conn, self.epochs, offsets)
            self.faults.strike("batch_after_fence")
            changes = Changes(offsets=offsets)
            window = self._reread(records)
            disposed = await self.store.disposed(conn, window)
            self._dead_letter_rejected(rejected, disposed, changes, report)
            await self._apply(conn, released, disposed, changes, report)
            await self._sweep(conn, sweep_cutoffs, changes, report)
            await self.store.save(conn, changes)
        self.faults.strike("batch_after_commit")

        self.committed.update(offsets)
        report.committed = True
        report.held = self.held
        report.duration_s = time.perf_counter() - started
        return report

    def _decode(
        self, records: Sequence[InputRecord], now_s: float, report: BatchReport
    ) -> list[tuple[InputRecord, Rejection]]:
        rejected: list[tuple[InputRecord, Rejection]] = []
        future_skew = timedelta(seconds=self.settings.event_future_skew_max_s)
        seen = self.sequencer.high_offsets()
        for record in records:
            tp = (record.position.topic, record.position.partition)
            committed = self.committed.get(tp)
            floor = max(committed.next_offset if committed else 0, seen.get(tp, 0))
            if record.position.offset < floor:
                # Handled already, or read twice since this process last
                # positioned the consumer: each offset enters once.
                report.refetched += 1
                continue
            seen[tp] = record.position.offset + 1
            report.count(record.position.topic, "consumed")
            decoded = decode(
                record.raw,
                self.prices,
                accepts=self.topic_types.get(record.position.topic),
                event_bytes_max=self.settings.event_bytes_max,
                future_skew_max=future_skew,
            )
            self._last_record_s[record.position.partition] = now_s
            if isinstance(decoded, Rejection):
                self.sequencer.seen(record.position)
                rejected.append((record, decoded))
            else:
                self.sequencer.add(decoded, record.position, now_s, record.raw)
        return rejected

    def _offsets(self) -> dict[TopicPartition, Progress]:
        """Progress per owned partition, never moving back."""
        resume = self.sequencer.resume_offsets()
        high = self.sequencer.high_offsets()
        offsets: dict[TopicPartition, Progress] = {}
        for tp, committed in self.committed.items():
            if tp not in self.epochs:
                continue
            seen = self.sequencer.prefix_time_max(*tp)
            latest = committed.time_max
            if seen is not None and (latest is None or seen > latest):
                latest = seen
            offsets[tp] = Progress(
                max(committed.next_offset, resume.get(tp, committed.next_offset)),
                max(committed.high_offset, high.get(tp, committed.high_offset)),
                latest,
            )
        return offsets

    def _read_to_end(
        self, highwaters: Mapping[TopicPartition, int | None] | None
    ) -> set[TopicPartition] | None:
        """Owned input partitions with nothing more to read (None: unknown)."""
        if highwaters is None:
            return None
        reached = self.sequencer.high_offsets()
        done: set[TopicPartition] = set()
        for tp, progress in self.committed.items():
            highwater = highwaters.get(tp)
            if (
                highwater is not None
                and reached.get(tp, progress.next_offset) >= highwater
            ):
                done.add(tp)
        return done

    def _partitions_read_to_end(
        self, read_to_end: set[TopicPartition] | None
    ) -> set[int]:
        """Partition numbers whose every owned input topic is read to its end."""
        partitions = {partition for _, partition in self.epochs}
        if read_to_end is None:
            return partitions
        return {
            p
            for p in partitions
            if all(tp in read_to_end for tp in self.epochs if tp[1] == p)
        }

    def _sweep_cutoffs(
        self, partitions: Iterable[int], limit: datetime | None, now_s: float
    ) -> dict[int, datetime]:
        """Per partition, the instant up to which lots may expire now.

        `limit` is the replay's `as_of`; the service passes none and the wall
        clock less the ordering delay applies. Either way the cutoff stays
        behind the partition's own data, unless the partition has been read
        to its end and silent for `expiry_idle_s`.
        """
        delay = self.settings.ordering_window + timedelta(
            milliseconds=self.settings.ordering_hold_max_ms
        )
        bound = limit or self.wall() - delay
        cutoffs: dict[int, datetime] = {}
        for partition in sorted(set(partitions)):
            idle_s = now_s - self._last_record_s.get(partition, now_s)
            progress = self.sequencer.progress(partition)
            if limit is None and idle_s >= self.settings.expiry_idle_s:
                cutoff = bound
            elif progress is None:
                continue
            else:
                cutoff = min(bound, progress - self.settings.ordering_window)
            if self.sequencer.settled(partition, cutoff):
                cutoffs[partition] = cutoff
        return cutoffs

    def _reread(self, records: Sequence[InputRecord]) -> list[Position]:
        """Positions that an earlier run may have handled already."""
        window: list[Position] = []
        for record in records:
            tp = (record.position.topic, record.position.partition)
            committed = self.committed.get(tp)
            if committed and record.position.offset < committed.high_offset:
                window.append(record.position)
        return window

    def _dead_letter_rejected(
        self,
        rejected: list[tuple[InputRecord, Rejection]],
        disposed: set[Position],
        changes: Changes,
        report: BatchReport,
    ) -> None:
        for record, rejection in rejected:
            if record.position in disposed:
                report.redelivered += 1
                continue
            self._dead_letter(record.position, record.raw, rejection, changes, report)

    def _dead_letter(
        self,
        position: Position,
        raw: RawRecord,
        rejection: Rejection,
        changes: Changes,
        report: BatchReport,
    ) -> None:
        changes.outbox.append(
            dead_letter_record(
                self.settings.topic_dead_letter,
                rejection,
                position,
                raw.value,
                raw.key,
                raw.headers,
                raw.timestamp_ms,
                self.settings.dead_letter_value_bytes_max,
            )
        )
        changes.dispositions.append(
            DispositionRecord(
                position,
                "dead_letter",
                str(rejection.reason),
                rejection.event_id,
                rejection.source,
            )
        )
        report.dead_letters += 1
        report.reasons[rejection.reason] = report.reasons.get(rejection.reason, 0) + 1
        report.count(position.topic, "dead_letter")
        log.warning(
            "record dead-lettered",
            extra={
                "reason": str(rejection.reason),
                "detail": rejection.detail[:300],
                "event_id": rejection.event_id,
                "account_id": rejection.account_id,
                "topic": position.topic,
                "partition": position.partition,
                "offset": position.offset,
            },
        )

    async def _apply(
        self,
        conn: AsyncConnection,
        released: list[Held],
        disposed: set[Position],
        changes: Changes,
        report: BatchReport,
    ) -> None:
        if not released:
            return
        applied = await self.store.applied(
            conn, [(held.event.source, held.event.id) for held in released]
        )
        accounts = await self.store.load_accounts(
            conn, {held.event.account_id for held in released}, _refunds(released)
        )
        changes.accounts.update(accounts)
        for held in released:
            event, position = held.event, held.position
            verdict = self._verdict(event, position, applied, disposed)
            if verdict == "redelivered":
                report.redelivered += 1
                continue
            if verdict == "duplicate":
                report.duplicates += 1
                report.count(position.topic, "duplicate")
                changes.dispositions.append(
                    DispositionRecord(
                        position, "duplicate", "duplicate", event.id, event.source
                    )
                )
                log.debug("duplicate event", extra=_event_log(event, position))
                continue
            if verdict == "conflict":
                report.conflicts += 1
                report.count(position.topic, "conflict")
                first = applied[(event.source, event.id)].position
                self._reject(
                    held,
                    Reason.CONFLICT,
                    f"id and source were used by an event with other content "
                    f"(first at {first.topic}[{first.partition}]@{first.offset})",
                    changes,
                    report,
                )
                continue
            account = accounts[event.account_id]
            if account.partition is None:
                account.partition = position.partition
            elif account.partition != position.partition:
                self._reject(
                    held,
                    Reason.PARTITION_MISMATCH,
                    f"the account's events belong to partition {account.partition}",
                    changes,
                    report,
                )
                continue
            outcome = apply(account, event, self.prices, self.rules)
            self._book_entries(outcome.entries, changes, report)
            if outcome.rejection is not None:
                self._dead_letter(
                    position, _raw_of(held), outcome.rejection, changes, report
                )
                continue
            self._raise(watch(account, event.time, self.alert_rules), changes, report)
            applied[(event.source, event.id)] = Applied(event.digest, position)
            changes.processed.append((event, position))
            report.applied += 1
            report.late += held.late
            report.count(position.topic, "applied")
            if event.recorded_at is not None:
                report.recorded.append(event.recorded_at)
            log.debug("event applied", extra=_event_log(event, position))

    def _verdict(
        self,
        event: Event,
        position: Position,
        applied: dict[tuple[str, str], Applied],
        disposed: set[Position],
    ) -> str:
        if position in disposed:
            return "redelivered"
        prior = applied.get((event.source, event.id))
        if prior is None:
            return "new"
        if prior.position == position:
            return "redelivered"
        return "duplicate" if prior.digest == event.digest else "conflict"

    def _reject(
        self,
        held: Held,
        reason: Reason,
        detail: str,
        changes: Changes,
        report: BatchReport,
    ) -> None:
        event = held.event
        rejection = Rejection(reason, detail, event.id, event.source, event.account_id)
        self._dead_letter(held.position, _raw_of(held), rejection, changes, report)

    def _book_entries(
        self, entries: list[Entry], changes: Changes, report: BatchReport
    ) -> None:
        topic = self.settings.topic_charges
        for entry in entries:
            report.expired_lots += entry.kind is EntryKind.EXPIRY
            if entry.charge is None:
                changes.entries.append((entry, None))
                continue
            row = rendered(entry.charge)
            changes.entries.append((entry, row))
            changes.outbox.append(charge_record(topic, entry.charge, row))
            report.charges += 1

    async def _sweep(
        self,
        conn: AsyncConnection,
        cutoffs: dict[int, datetime],
        changes: Changes,
        report: BatchReport,
    ) -> None:
        """Expire due lots of quiet accounts, so expiry rows do not wait for
        the account's next event."""
        account_ids = await self.store.accounts_expiring(
            conn,
            cutoffs,
            self.settings.expiry_sweep_lots_max,
            self.alert_rules.expiring_within,
        )
        missing = [a for a in account_ids if a not in changes.accounts]
        changes.accounts.update(await self.store.load_accounts(conn, missing))
        for account_id in account_ids:
            account: Account = changes.accounts[account_id]
            if account.partition not in cutoffs:
                continue
            cutoff = cutoffs[account.partition]
            entries = expire_due(account, cutoff, self.prices, self.rules)
            self._book_entries(entries, changes, report)
            self._raise(watch(account, cutoff, self.alert_rules), changes, report)

    def _raise(
        self, alerts: list[Alert], changes: Changes, report: BatchReport
    ) -> None:
        for alert in alerts:
            changes.outbox.append(
                alert_record(
                    self.settings.topic_alerts, self.settings.alert_source, alert
                )
            )
            kind = str(alert.kind)
            report.alerts[kind] = report.alerts.get(kind, 0) + 1
            log.debug(
                "alert raised",
                extra={
                    "alert": kind,
                    "alert_id": alert.alert_id,
                    "account_id": alert.account_id,
                    "currency": alert.data.get("currency"),
                },
            )


def _refunds(released: list[Held]) -> dict[str, set[str]]:
    named: dict[str, set[str]] = {}
    for held in released:
        if isinstance(held.event.data, RefundData):
            named.setdefault(held.event.account_id, set()).add(
                held.event.data.purchase_id
            )
    return named


def _raw_of(held: Held) -> RawRecord:
    return held.origin if isinstance(held.origin, RawRecord) else RawRecord(value=None)


def _event_log(event: Event, position: Position) -> dict[str, object]:
    return {
        "event_id": event.id,
        "account_id": event.account_id,
        "type": str(event.type),
        "topic": position.topic,
        "partition": position.partition,
        "offset": position.offset,
    }
