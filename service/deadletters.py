"""The dead-letter topic, read back and re-submitted by an operator.

A dead letter keeps the refused record's original value, key and headers,
and says in `dlq.*` headers why it was refused and where it was read (see
`service.records`). After the cause is fixed (a SKU added to the price list,
the purchase a refund names now applied), the operator re-submits chosen
records: each goes back to the input topic it came from, unchanged, with a
header naming the dead letter it came from and one with the original
record's timestamp. The ledger then treats it like any record: applied if it
is now acceptable, dead-lettered again (with a new reason) if not, counted as
a duplicate if it was applied meanwhile. It is booked by the time it is read
again, so usage of a period that closed meanwhile becomes a correction in
the open one, while the lateness limit counts from when it was first
recorded: a slow fix does not make the meter late.

Only the service's own input topics are written to, whatever a header says,
and a record whose value was truncated when it was dead-lettered is refused:
its original bytes are gone.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRecord,
    TopicPartition,
)

from ledger.errors import LedgerError
from ledger.events import FIRST_RECORDED_HEADER
from service.records import (
    DLQ_PREFIX,
    HEADER_DETAIL,
    HEADER_EVENT_ID,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_SHA256,
    HEADER_SOURCE,
    HEADER_TIMESTAMP,
    HEADER_TOPIC,
    HEADER_TRUNCATED,
)
from service.settings import Settings

HEADER_RESUBMITTED_FROM = "x-resubmitted-from"
READ_TIMEOUT_S = 60.0


class ResubmitError(LedgerError):
    """A chosen dead letter cannot be re-submitted; nothing was produced."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the dead-letter topic, as an operator reads it."""

    offset: int
    timestamp_ms: int
    recorded_ms: int | None
    reason: str
    detail: str
    topic: str
    partition: int | None
    source_offset: int | None
    event_id: str | None
    event_source: str | None
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    truncated: bool
    intact: bool

    @property
    def account_id(self) -> str | None:
        return self.key.decode(errors="replace") if self.key else None

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.source_offset}"


@dataclass(frozen=True, slots=True)
class Resubmitted:
    dead_letter_offset: int
    topic: str
    partition: int
    offset: int


async def read_dead_letters(
    settings: Settings, reason: str | None = None
) -> list[DeadLetter]:
    """Every dead letter committed so far, oldest first (optionally of one
    reason). Reads up to the end offsets found at the start, so a busy topic
    cannot keep the command running."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.client_id}-dead-letters",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic_dead_letter, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        found: list[DeadLetter] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{settings.topic_dead_letter} was not read to offset {end} "
                    f"within {READ_TIMEOUT_S:.0f} s"
                )
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=1000)
            for record in batch.get(tp, []):
                if record.offset >= end:
                    break
                letter = _dead_letter(record)
                if reason is None or letter.reason == reason:
                    found.append(letter)
    finally:
        await consumer.stop()
    return found


async def resubmit(settings: Settings, offsets: Iterable[int]) -> list[Resubmitted]:
    """Produce the chosen dead letters back to their input topics.

    Raises:
        ResubmitError: an offset names no dead letter, or one that must not
            be re-submitted (truncated, altered, or from a topic that is not
            an input); checked for all before anything is produced.
    """
    wanted = sorted(set(offsets))
    letters = {letter.offset: letter for letter in await read_dead_letters(settings)}
    chosen = [_resubmittable(settings, letters.get(n), n) for n in wanted]
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.client_id}-resubmit",
        enable_idempotence=True,
        acks="all",
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    done: list[Resubmitted] = []
    try:
        for letter in chosen:
            sent = await producer.send_and_wait(
                letter.topic,
                value=letter.value,
                key=letter.key,
                headers=_resubmitted_headers(settings, letter),
            )
            done.append(
                Resubmitted(letter.offset, sent.topic, sent.partition, sent.offset)
            )
    finally:
        await producer.stop()
    return done


def _resubmitted_headers(
    settings: Settings, letter: DeadLetter
) -> list[tuple[str, bytes]]:
    """The original headers, where the record came from, and when it was first
    recorded (kept from an earlier re-submission, else the original's own
    timestamp), so lateness is judged from then."""
    origin = f"{settings.topic_dead_letter}@{letter.offset}".encode()
    headers = [*letter.headers, (HEADER_RESUBMITTED_FROM, origin)]
    first = any(name == FIRST_RECORDED_HEADER for name, _ in letter.headers)
    if not first and letter.recorded_ms is not None:
        headers.append((FIRST_RECORDED_HEADER, str(letter.recorded_ms).encode()))
    return headers


def _resubmittable(
    settings: Settings, letter: DeadLetter | None, offset: int
) -> DeadLetter:
    if letter is None:
        raise ResubmitError(f"no dead letter at offset {offset}")
    if letter.truncated or not letter.intact:
        raise ResubmitError(
            f"dead letter {offset} keeps only part of the original value; "
            "send a corrected record from its source instead"
        )
    if letter.topic not in settings.input_topics:
        raise ResubmitError(
            f"dead letter {offset} came from {letter.topic!r}, which is not an "
            "input topic of this ledger"
        )
    return letter


def _dead_letter(record: ConsumerRecord) -> DeadLetter:
    headers: list[tuple[str, bytes]] = list(record.headers or ())
    context = {name: raw.decode(errors="replace") for name, raw in headers}
    value: bytes = record.value or b""
    digest = context.get(HEADER_SHA256)
    return DeadLetter(
        offset=record.offset,
        timestamp_ms=record.timestamp,
        recorded_ms=_int(context.get(HEADER_TIMESTAMP)),
        reason=context.get(HEADER_REASON, "unknown"),
        detail=context.get(HEADER_DETAIL, ""),
        topic=context.get(HEADER_TOPIC, ""),
        partition=_int(context.get(HEADER_PARTITION)),
        source_offset=_int(context.get(HEADER_OFFSET)),
        event_id=context.get(HEADER_EVENT_ID),
        event_source=context.get(HEADER_SOURCE),
        key=record.key,
        value=value,
        headers=tuple(
            (name, raw)
            for name, raw in headers
            if not name.startswith(DLQ_PREFIX) and name != HEADER_RESUBMITTED_FROM
        ),
        truncated=context.get(HEADER_TRUNCATED) == "true",
        intact=digest is None or hashlib.sha256(value).hexdigest() == digest,
    )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
