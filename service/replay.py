"""The file replay: the service's accounting over a file of CloudEvents.

A replay reads a JSON Lines file (one structured CloudEvent per line, events
of both input topics mixed) through the same `Bookkeeper` as the Kafka
consumer, on an embedded SQLite store unless a database URL is given. The
file's line order plays the part of arrival order, and the same ordering
window applies, so the replay produces the same rows as the service for the
same events. At the end every held event is released and lots due by
`as_of` (default: now) expire, as the service's sweep would do.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.events import RawRecord
from ledger.ordering import Position
from ledger.prices import PriceList
from service.bookkeeper import BatchReport, Bookkeeper, InputRecord
from service.database import create_embedded_schema, create_engine
from service.exports import write_rows
from service.queries import Balance, balances, charge_rows
from service.settings import Settings
from service.tables import DISPOSITIONS

log = logging.getLogger(__name__)

REPLAY_TOPIC = "replay"
REPLAY_CHUNK_RECORDS = 5_000


@dataclass(slots=True)
class ReplayResult:
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    late: int = 0
    rows: int = 0
    balances: list[Balance] = field(default_factory=list)
    rejections: list[tuple[int, str, str | None]] = field(default_factory=list)

    def add(self, report: BatchReport) -> None:
        self.applied += report.applied
        self.duplicates += report.duplicates
        self.dead_letters += report.dead_letters
        self.late += report.late


def read_lines(path: Path) -> Iterator[InputRecord]:
    """Records of a JSON Lines file; offset = line number from 0.

    A file has no Kafka record timestamps; the CloudEvent extension attribute
    `recordedat` (RFC 3339), when present, stands for one, so a file can
    replay an event that was recorded after its billing period closed.
    """
    with path.open("rb") as handle:
        for number, line in enumerate(handle):
            value = line.rstrip(b"\r\n")
            if not value.strip():
                continue
            raw = RawRecord(value=value, timestamp_ms=recorded_ms(value))
            yield InputRecord(Position(REPLAY_TOPIC, 0, number), raw)


def recorded_ms(line: bytes) -> int | None:
    """The `recordedat` of a line, as epoch milliseconds, if it has one."""
    if b'"recordedat"' not in line:
        return None
    try:
        recorded = json.loads(line).get("recordedat")
        return int(datetime.fromisoformat(recorded).timestamp() * 1000)
    except (ValueError, TypeError, AttributeError):
        return None


async def replay(
    events: Path,
    prices: PriceList,
    settings: Settings,
    *,
    out: Path | None = None,
    database_url: str | None = None,
    as_of: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Replay `events` and write the FOCUS rows to `out` (.csv or .parquet)."""
    with tempfile.TemporaryDirectory(prefix="focus-ledger-replay-") as scratch:
        url = database_url or f"sqlite+aiosqlite:///{scratch}/replay.db"
        engine = create_engine(settings, url)
        try:
            if url.startswith("sqlite"):
                await create_embedded_schema(engine)
            return await _replay(engine, events, prices, settings, out, as_of, progress)
        finally:
            await engine.dispose()


async def _replay(
    engine: AsyncEngine,
    events: Path,
    prices: PriceList,
    settings: Settings,
    out: Path | None,
    as_of: datetime | None,
    progress: Callable[[int], None] | None,
) -> ReplayResult:
    # Lines replace the wall clock: only the ordering window decides, and the
    # end of the file releases everything still held.
    bookkeeper = Bookkeeper(
        engine,
        prices,
        settings,
        clock_s=lambda: 0.0,
        topic_types={},
        replay_topic=REPLAY_TOPIC,
    )
    await bookkeeper.assign([(REPLAY_TOPIC, 0)])
    result = ReplayResult()
    chunk: list[InputRecord] = []
    for record in read_lines(events):
        chunk.append(record)
        if len(chunk) >= REPLAY_CHUNK_RECORDS:
            result.add(await bookkeeper.book(chunk))
            result.records += len(chunk)
            if progress:
                progress(len(chunk))
            chunk = []
    moment = as_of or datetime.now(UTC)
    result.add(
        await bookkeeper.book(
            chunk, flush=True, sweep_partitions=[0], sweep_cutoff=moment
        )
    )
    result.records += len(chunk)
    if progress and chunk:
        progress(len(chunk))
    while (
        await bookkeeper.book([], sweep_partitions=[0], sweep_cutoff=moment)
    ).expired_lots:
        pass

    async with engine.connect() as conn:
        result.balances = await balances(conn, moment)
        query = (
            sa.select(
                DISPOSITIONS.c.offset, DISPOSITIONS.c.reason, DISPOSITIONS.c.event_id
            )
            .where(DISPOSITIONS.c.outcome == "dead_letter")
            .order_by(DISPOSITIONS.c.offset)
        )
        result.rejections = [
            (row.offset + 1, row.reason, row.event_id)
            for row in await conn.execute(query)
        ]
        if out is not None:
            result.rows = await write_rows(charge_rows(conn), out)
    return result
