"""The batch transaction on a real store: one suite, SQLite and PostgreSQL.

Each test books records as the consumer would and then looks at what the
store holds: journal, lots, outbox, offsets. Restarts are simulated with a
fresh `Bookkeeper` on the same database, which is exactly what a new process
has.
"""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.errors import InvariantError
from ledger.events import FIRST_RECORDED_HEADER
from ledger.ordering import Position
from service.bookkeeper import Bookkeeper, InputRecord
from service.database import create_embedded_schema, create_engine
from service.queries import balances
from service.records import HEADER_REASON
from service.settings import Settings
from service.store import FencedError
from service.tables import DISPOSITIONS, ENTRIES, LOTS, OFFSETS, OUTBOX, PROCESSED
from tests.factories import at, purchase_doc, raw, refund_doc, spec_prices, usage_doc

PURCHASES, USAGE = "credits.purchases", "usage.events"
SETTINGS = Settings(ordering_hold_max_ms=0)
PRICES = spec_prices()
Q = "SKU-762343"
W = "SKU-78314"


class Clock:  # a clock that only moves when a test moves it
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def keeper(
    engine: AsyncEngine, settings: Settings = SETTINGS, clock: Clock | None = None
) -> Bookkeeper:
    return Bookkeeper(engine, PRICES, settings, clock_s=clock or Clock())


def record(
    topic: str, offset: int, document: dict[str, Any] | bytes, partition: int = 0
) -> InputRecord:
    key = document["subject"] if isinstance(document, dict) else None
    return InputRecord(Position(topic, partition, offset), raw(document, key=key))


async def claim_all(
    bookkeeper: Bookkeeper, partitions: int = 1
) -> dict[tuple[str, int], int]:
    return await bookkeeper.assign(
        [(topic, p) for topic in (PURCHASES, USAGE) for p in range(partitions)]
    )


async def scalar(engine: AsyncEngine, query: sa.Select[Any]) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(query)).scalar_one()


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    query = sa.select(sa.func.count()).select_from(table)
    return int(await scalar(engine, query))


STORY = [
    record(
        PURCHASES, 0, purchase_doc("p1", "2025-04-01T00:00:00Z", "a", "100", "100.00")
    ),
    record(USAGE, 0, usage_doc("u1", "2025-04-01T01:00:00Z", "a", Q, "30")),
    record(USAGE, 1, usage_doc("u2", "2025-04-01T02:00:00Z", "a", Q, "80")),
    record(
        PURCHASES, 1, purchase_doc("p2", "2025-04-02T00:00:00Z", "a", "50", "75.00")
    ),
]


async def test_a_batch_books_journal_lots_outbox_and_offsets(
    engine: AsyncEngine,
) -> None:
    bookkeeper = keeper(engine)
    await claim_all(bookkeeper)

    report = await bookkeeper.book(STORY, flush=True)

    assert report.committed and report.applied == 4
    assert report.charges == 5  # 2 purchases, 2 usage, 1 settlement of u2's deficit
    # u2 runs the balance below 10 % of p1 (into a deficit): one alert.
    assert report.alerts == {"credits.balance_low": 1}
    async with engine.connect() as conn:
        topics = sorted(r.topic for r in await conn.execute(sa.select(OUTBOX)))
    assert topics == [SETTINGS.topic_charges] * 5 + [SETTINGS.topic_alerts]
    assert await count(engine, PROCESSED) == 4
    basis = await scalar(
        engine,
        sa.select(sa.func.count())
        .select_from(ENTRIES)
        .where(ENTRIES.c.kind == "deficit"),
    )
    assert basis == 1
    async with engine.connect() as conn:
        offsets = {
            (r.topic, r.partition): (r.next_offset, r.high_offset)
            for r in await conn.execute(sa.select(OFFSETS))
        }
        lots = {r.purchase_id: r for r in await conn.execute(sa.select(LOTS))}
    assert offsets == {(PURCHASES, 0): (2, 2), (USAGE, 0): (2, 2)}
    assert lots["p1"].status == "empty" and lots["p1"].remaining_basis == 0
    assert lots["p2"].remaining_quantity == Decimal(40)
    assert lots["p2"].remaining_basis == Decimal(60)


async def test_a_copy_is_counted_and_a_reused_id_is_dead_lettered(
    engine: AsyncEngine,
) -> None:
    bookkeeper = keeper(engine)
    await claim_all(bookkeeper)
    await bookkeeper.book(STORY[:2], flush=True)
    copy = record(USAGE, 1, usage_doc("u1", "2025-04-01T01:00:00Z", "a", Q, "30.000"))
    reuse = record(USAGE, 2, usage_doc("u1", "2025-04-01T01:00:00Z", "a", Q, "31"))

    report = await bookkeeper.book([copy, reuse], flush=True)

    assert (report.applied, report.duplicates, report.conflicts) == (0, 1, 1)
    async with engine.connect() as conn:
        dead = (
            await conn.execute(
                sa.select(OUTBOX).where(OUTBOX.c.topic == SETTINGS.topic_dead_letter)
            )
        ).one()
        outcomes = sorted(
            (r.offset, r.outcome) for r in await conn.execute(sa.select(DISPOSITIONS))
        )
    headers = dict(dead.headers)
    assert bytes.fromhex(headers[HEADER_REASON]) == b"id_conflict"
    assert json.loads(dead.value)["data"]["quantity"] == "31"
    assert outcomes == [(1, "duplicate"), (2, "dead_letter")]


async def test_records_read_again_after_a_restart_are_not_counted_twice(
    engine: AsyncEngine,
) -> None:
    first = keeper(engine, Settings(ordering_hold_max_ms=60_000))
    await claim_all(first)
    held = record(USAGE, 0, usage_doc("u-held", "2025-04-01T05:00:00Z", "a", Q, "1"))
    poison = record(USAGE, 1, b"not json at all")
    early = record(
        PURCHASES, 0, purchase_doc("p", "2025-04-01T00:00:00Z", "a", "5", "5")
    )
    usage = record(USAGE, 2, usage_doc("u-now", "2025-04-01T00:00:01Z", "a", Q, "1"))
    stream = [held, poison, early, usage]

    report = await first.book(stream)
    # Purchases are only at 00:00:00, so every event waits; the poison record
    # is dead-lettered at once, and the held events keep the offsets back.
    assert (report.applied, report.dead_letters, report.held) == (0, 1, 3)

    # A crash now: the next process reads the same records again.
    restarted = keeper(engine)
    offsets = await claim_all(restarted)
    assert offsets == {(PURCHASES, 0): 0, (USAGE, 0): 0}
    again = await restarted.book(stream, flush=True)
    assert (again.applied, again.redelivered, again.dead_letters) == (3, 1, 0)

    # And once more after everything is committed: nothing enters at all.
    third = keeper(engine)
    assert await claim_all(third) == {(PURCHASES, 0): 1, (USAGE, 0): 3}
    last = await third.book(stream, flush=True)
    assert (last.refetched, last.applied, last.committed) == (4, 0, False)
    assert await count(engine, PROCESSED) == 3
    assert await count(engine, DISPOSITIONS) == 1


async def test_a_zombie_that_lost_its_partitions_cannot_commit(
    engine: AsyncEngine,
) -> None:
    zombie, successor = keeper(engine), keeper(engine)
    await claim_all(zombie)
    await claim_all(successor)

    with pytest.raises(FencedError):
        await zombie.book(STORY, flush=True)

    assert await count(engine, ENTRIES) == 0
    report = await successor.book(STORY, flush=True)
    assert report.applied == 4


async def test_a_business_rejection_is_dead_lettered_and_may_be_resubmitted(
    engine: AsyncEngine,
) -> None:
    bookkeeper = keeper(engine)
    await claim_all(bookkeeper)
    refund = refund_doc("r", "2025-04-03T00:00:00Z", "a", "p-unknown", "1.00")

    first = await bookkeeper.book([record(PURCHASES, 0, refund)], flush=True)
    resubmitted = await bookkeeper.book([record(PURCHASES, 1, refund)], flush=True)

    assert first.dead_letters == resubmitted.dead_letters == 1
    assert first.reasons == {"unknown_purchase": 1}
    assert await count(engine, PROCESSED) == 0


async def test_an_account_seen_on_another_partition_is_refused(
    engine: AsyncEngine,
) -> None:
    bookkeeper = keeper(engine)
    await claim_all(bookkeeper, partitions=2)
    await bookkeeper.book([STORY[0]], flush=True)
    moved = record(
        USAGE, 0, usage_doc("u9", "2025-04-02T00:00:00Z", "a", Q, "1"), partition=1
    )

    report = await bookkeeper.book([moved], flush=True)

    assert report.reasons == {"partition_mismatch": 1}


async def test_a_lot_whose_journal_does_not_add_up_stops_the_batch(
    engine: AsyncEngine,
) -> None:
    bookkeeper = keeper(engine)
    await claim_all(bookkeeper)
    await bookkeeper.book(STORY[:2], flush=True)
    async with engine.begin() as conn:
        await conn.execute(sa.delete(ENTRIES).where(ENTRIES.c.kind == "usage"))

    with pytest.raises(InvariantError):
        await bookkeeper.book([STORY[2]], flush=True)

    assert await count(engine, PROCESSED) == 2


async def test_a_sweep_expires_quiet_lots_once_the_data_has_passed_them(
    engine: AsyncEngine,
) -> None:
    bookkeeper = keeper(engine)
    await claim_all(bookkeeper)
    lot = purchase_doc(
        "p",
        "2025-04-01T00:00:00Z",
        "a",
        "10",
        "10.00",
        expires_at="2025-04-10T00:00:00Z",
    )
    await bookkeeper.book([record(PURCHASES, 0, lot)], flush=True)
    as_of = at("2025-04-20T00:00:00Z")

    # The partition's data is still at 1 April: expiring now would run ahead
    # of events that may yet arrive for 2 to 9 April.
    early = await bookkeeper.book([], sweep_partitions=[0], sweep_cutoff=as_of)
    other = usage_doc("b-u", "2025-04-12T00:00:00Z", "b", Q, "1")
    await bookkeeper.book([record(USAGE, 0, other)], flush=True)
    swept = await bookkeeper.book([], sweep_partitions=[0], sweep_cutoff=as_of)
    again = await bookkeeper.book([], sweep_partitions=[0], sweep_cutoff=as_of)

    assert (early.expired_lots, swept.expired_lots, again.expired_lots) == (0, 1, 0)
    query = (
        sa.select(sa.func.count())
        .select_from(ENTRIES)
        .where(ENTRIES.c.kind == "expiry")
    )
    assert await scalar(engine, query) == 1


HISTORY = [
    record(
        PURCHASES,
        0,
        purchase_doc(
            "h1",
            "2025-04-01T00:00:00Z",
            "a",
            "100",
            "100.00",
            expires_at="2025-04-06T00:00:00Z",
        ),
    ),
    record(USAGE, 0, usage_doc("hu1", "2025-04-02T00:00:00Z", "a", Q, "30")),
    record(USAGE, 1, usage_doc("hu2", "2025-04-03T00:00:00Z", "a", W, "40")),
    record(
        PURCHASES, 1, purchase_doc("h2", "2025-04-04T00:00:00Z", "a", "50", "75.00")
    ),
    record(
        PURCHASES,
        2,
        refund_doc("hr", "2025-04-05T00:00:00Z", "a", "h2", "15.00", quantity="10"),
    ),
    record(USAGE, 2, usage_doc("hu3", "2025-04-07T00:00:00Z", "a", Q, "5")),
]
INSTANTS = [
    "2025-04-01T12:00:00Z",
    "2025-04-02T00:00:00Z",
    "2025-04-03T12:00:00Z",
    "2025-04-04T00:00:00Z",
    "2025-04-05T12:00:00Z",
    "2025-04-06T00:00:00Z",
    "2025-04-08T00:00:00Z",
]


@pytest.mark.parametrize("instant", INSTANTS)
async def test_a_balance_as_of_an_instant_equals_a_replay_up_to_it(
    engine: AsyncEngine, tmp_path: Path, instant: str
) -> None:
    full = keeper(engine)
    await claim_all(full)
    await full.book(HISTORY, flush=True)
    moment = at(instant)
    partial = create_engine(SETTINGS, f"sqlite+aiosqlite:///{tmp_path}/partial.db")
    await create_embedded_schema(partial)
    replayed = keeper(partial)
    await claim_all(replayed)
    await replayed.book(
        [r for r in HISTORY if json.loads(r.raw.value or b"{}")["time"] <= instant],
        flush=True,
    )

    async with engine.connect() as conn:
        as_of = await balances(conn, moment, "a")
    async with partial.connect() as conn:
        expected = await balances(conn, moment, "a")
    await partial.dispose()

    assert as_of == expected
    assert as_of, "the account has a balance line from its first purchase on"


async def test_a_new_owner_does_not_let_usage_pass_purchases_it_must_reread(
    engine: AsyncEngine,
) -> None:
    first = keeper(engine, Settings(ordering_hold_max_ms=60_000))
    await claim_all(first)
    top_up = record(
        PURCHASES, 0, purchase_doc("t1", "2025-04-01T10:00:00Z", "a", "10", "10.00")
    )
    later = record(
        PURCHASES, 1, purchase_doc("t2", "2025-04-01T10:30:00Z", "a", "10", "10.00")
    )
    await first.book([top_up, later])  # both held: usage has not been read

    successor = keeper(engine, Settings(ordering_hold_max_ms=0))
    await claim_all(successor)
    spend = record(USAGE, 0, usage_doc("spend", "2025-04-01T10:20:00Z", "a", Q, "5"))
    # The successor reads usage first; the purchases still have a backlog.
    waiting = await successor.book(
        [spend], highwaters={(PURCHASES, 0): 2, (USAGE, 0): 1}
    )
    done = await successor.book(
        [top_up, later], highwaters={(PURCHASES, 0): 2, (USAGE, 0): 1}, flush=True
    )

    assert (waiting.applied, done.applied) == (0, 3)
    query = sa.select(ENTRIES.c.kind).where(ENTRIES.c.event_id == "spend")
    assert await scalar(engine, query) == "usage"  # drawn from t1, not owed


def _recorded(
    topic: str, offset: int, document: dict[str, Any], written: str
) -> InputRecord:
    """A record whose Kafka timestamp says when the ledger learned of it."""
    base = record(topic, offset, document)
    moment = int(at(written).timestamp() * 1000)
    return InputRecord(base.position, replace(base.raw, timestamp_ms=moment))


async def test_usage_recorded_after_its_period_closed_is_a_correction(
    engine: AsyncEngine,
) -> None:
    bookkeeper = keeper(engine)
    await claim_all(bookkeeper)
    lot = purchase_doc("cp", "2025-04-01T00:00:00Z", "a", "100", "100.00")
    late = usage_doc("cu", "2025-04-29T10:00:00Z", "a", Q, "3")
    on_time = usage_doc("cv", "2025-04-30T10:00:00Z", "a", Q, "1")
    stream = [
        _recorded(PURCHASES, 0, lot, "2025-04-01T00:00:01Z"),
        _recorded(USAGE, 0, on_time, "2025-05-02T00:00:00Z"),  # April still open
        _recorded(USAGE, 1, late, "2025-05-07T00:00:00Z"),  # April closed on 6 May
    ]

    await bookkeeper.book(stream, flush=True)

    async with engine.connect() as conn:
        rows = {
            r.event_id: r.charge
            for r in await conn.execute(sa.select(ENTRIES.c.event_id, ENTRIES.c.charge))
        }
    assert rows["cv"]["BillingPeriodStart"] == "2025-04-01T00:00:00Z"
    assert rows["cv"]["ChargeClass"] is None
    assert rows["cu"]["BillingPeriodStart"] == "2025-05-01T00:00:00Z"
    assert rows["cu"]["ChargePeriodStart"] == "2025-04-29T10:00:00Z"
    assert rows["cu"]["ChargeClass"] == "Correction"


async def test_tax_is_its_own_row_on_the_purchase_invoice(engine: AsyncEngine) -> None:
    bookkeeper = keeper(engine)
    await claim_all(bookkeeper)
    taxed = purchase_doc(
        "tp",
        "2025-04-01T00:00:00Z",
        "a",
        "100",
        "100.00",
        tax_amount="19.00",
        tax_description="VAT 19 %",
    )

    report = await bookkeeper.book([record(PURCHASES, 0, taxed)], flush=True)

    async with engine.connect() as conn:
        rows = [
            r.charge
            for r in await conn.execute(
                sa.select(ENTRIES.c.charge).order_by(ENTRIES.c.seq)
            )
        ]
    tax = next(row for row in rows if row["ChargeCategory"] == "Tax")
    assert report.charges == 2
    assert (tax["BilledCost"], tax["EffectiveCost"]) == ("19.00", "19.00")
    assert tax["InvoiceId"] == "INV-tp" and tax["ChargeDescription"] == "VAT 19 %"
    assert tax["SkuId"] is None and tax["PricingQuantity"] is None
    assert tax["ListUnitPrice"] is None and tax["ContractedUnitPrice"] is None


async def test_a_resubmitted_record_is_late_from_its_first_recording(
    engine: AsyncEngine,
) -> None:
    """A dead letter sent back months later is not refused as late, but it is
    booked when it is read again: into the period open then, as a correction."""
    bookkeeper = keeper(engine)
    await claim_all(bookkeeper)
    lot = purchase_doc("rp", "2025-04-01T00:00:00Z", "a", "100", "100.00")
    usage = usage_doc("ru", "2025-04-29T10:00:00Z", "a", Q, "3")
    again = _recorded(USAGE, 0, usage, "2025-09-15T00:00:00Z")
    first = int(at("2025-04-29T10:00:05Z").timestamp() * 1000)
    resubmitted = InputRecord(
        again.position,
        replace(again.raw, headers=[(FIRST_RECORDED_HEADER, str(first).encode())]),
    )
    plain = _recorded(
        USAGE,
        1,
        usage_doc("rv", "2025-04-29T11:00:00Z", "a", Q, "1"),
        "2025-09-15T00:00:00Z",
    )
    garbled = InputRecord(
        Position(USAGE, 0, 2),
        replace(
            record(USAGE, 2, usage_doc("rw", "2025-04-29T12:00:00Z", "a", Q, "1")).raw,
            headers=[(FIRST_RECORDED_HEADER, b"yesterday")],
        ),
    )
    stream = [
        _recorded(PURCHASES, 0, lot, "2025-04-01T00:00:01Z"),
        resubmitted,
        plain,
        garbled,
    ]

    report = await bookkeeper.book(stream, flush=True)

    async with engine.connect() as conn:
        rows = {
            r.event_id: r.charge
            for r in await conn.execute(sa.select(ENTRIES.c.event_id, ENTRIES.c.charge))
        }
    assert report.applied == 2
    assert report.reasons == {"later_than_lateness_max": 1, "invalid_attribute": 1}
    assert rows["ru"]["ChargeClass"] == "Correction"
    assert rows["ru"]["BillingPeriodStart"] == "2025-09-01T00:00:00Z"
    assert rows["ru"]["ChargePeriodStart"] == "2025-04-29T10:00:00Z"
    assert "rv" not in rows
