"""Hostile input on a real store: one dead letter each, nothing else moves."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.events import RawRecord
from ledger.ordering import Position
from service.bookkeeper import Bookkeeper, InputRecord
from service.docs import render
from service.records import HEADER_OFFSET, HEADER_REASON, HEADER_TOPIC
from service.settings import Settings
from service.tables import ACCOUNTS, DISPOSITIONS, ENTRIES, LOTS, OUTBOX
from tests import hostile
from tests.factories import purchase_doc, spec_prices

SETTINGS = Settings(ordering_hold_max_ms=0)
DOCS = Path(__file__).parents[2] / "docs" / "hostile-input.md"


async def test_each_hostile_record_is_one_dead_letter_and_nothing_else(
    engine: AsyncEngine,
) -> None:
    bookkeeper = Bookkeeper(engine, spec_prices(), SETTINGS)
    await bookkeeper.assign([(topic, 0) for topic in hostile.topics(SETTINGS).values()])
    records = hostile.records(SETTINGS)

    report = await bookkeeper.book(records, flush=True)

    assert report.applied == 2  # the setup purchase and the follower
    assert report.dead_letters == len(hostile.CASES)
    async with engine.connect() as conn:
        dead = list(
            await conn.execute(
                sa.select(OUTBOX)
                .where(OUTBOX.c.topic == SETTINGS.topic_dead_letter)
                .order_by(OUTBOX.c.seq)
            )
        )
        entries = list(
            await conn.execute(sa.select(ENTRIES.c.event_id, ENTRIES.c.kind))
        )
        lots = (
            await conn.execute(sa.select(sa.func.count()).select_from(LOTS))
        ).scalar()
        accounts = [row.account_id for row in await conn.execute(sa.select(ACCOUNTS))]
        dispositions = (
            await conn.execute(sa.select(sa.func.count()).select_from(DISPOSITIONS))
        ).scalar()
    by_position = {}
    for row in dead:
        headers = {name: bytes.fromhex(value).decode() for name, value in row.headers}
        by_position[(headers[HEADER_TOPIC], int(headers[HEADER_OFFSET]))] = (
            headers[HEADER_REASON],
            row.value,
        )
    cases = dict(zip((r.position for r in records[1:-1]), hostile.CASES, strict=True))
    assert len(by_position) == len(cases) == dispositions
    for position, case in cases.items():
        reason, value = by_position[(position.topic, position.offset)]
        assert reason == case.reason, case.name
        kept = (case.value or b"")[: SETTINGS.dead_letter_value_bytes_max]
        assert value == kept, case.name
    assert sorted(entries) == [("h-after", "usage"), ("h-lot", "purchase")]
    assert lots == 1
    assert accounts == [hostile.ACCOUNT]


async def test_sql_in_display_names_is_only_data(engine: AsyncEngine) -> None:
    bookkeeper = Bookkeeper(engine, spec_prices(), SETTINGS)
    await bookkeeper.assign([(SETTINGS.topic_purchases, 0), (SETTINGS.topic_usage, 0)])
    document = purchase_doc(
        "p-sql",
        "2025-04-01T00:00:00Z",
        "acct-sql",
        "1",
        "1",
        billing_account_name=hostile.SQL,
        sub_account_name=hostile.SQL,
    )
    record = InputRecord(
        Position(SETTINGS.topic_purchases, 0, 0),
        RawRecord(json.dumps(document).encode(), b"acct-sql"),
    )

    report = await bookkeeper.book([record], flush=True)

    assert report.applied == 1
    async with engine.connect() as conn:
        name = (await conn.execute(sa.select(ACCOUNTS.c.name))).scalar_one()
        row = (await conn.execute(sa.select(OUTBOX.c.value))).scalar_one()
        lots = (
            await conn.execute(sa.select(sa.func.count()).select_from(LOTS))
        ).scalar()
    assert name == hostile.SQL
    assert json.loads(row)["BillingAccountName"] == hostile.SQL
    assert lots == 1


async def test_the_documented_table_is_what_the_code_does() -> None:
    results = await hostile.outcomes(SETTINGS)

    assert results == [case.reason for case in hostile.CASES]
    page = DOCS.read_text(encoding="utf-8")
    assert render(page, {"hostile": lambda: hostile.table(results)}) == page
