"""Reconciliation, month-end report and export on a real store."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.events import RawRecord
from ledger.ordering import Position
from service.bookkeeper import Bookkeeper, InputRecord
from service.exports import export, read_rows
from service.reports import month_end, reconcile_invoice
from service.settings import Settings
from tests.factories import SPEC, spec_prices

SETTINGS = Settings(ordering_hold_max_ms=0)


async def _book_b1_b2(engine: AsyncEngine) -> None:
    bookkeeper = Bookkeeper(engine, spec_prices(), SETTINGS, topic_types={})
    await bookkeeper.assign([("replay", 0)])
    lines = (SPEC / "b1b2.jsonl").read_bytes().splitlines()
    records = [
        InputRecord(Position("replay", 0, n), RawRecord(value=line))
        for n, line in enumerate(lines)
    ]
    await bookkeeper.book(records, flush=True)


async def test_b1_b2_reconciles_to_the_cent(engine: AsyncEngine) -> None:
    await _book_b1_b2(engine)

    async with engine.connect() as conn:
        result = await reconcile_invoice(conn, "INV-ACME-2025-04")

    assert result.billed == Decimal("100000.00")
    assert result.total("consumed") == Decimal("615.00")
    assert result.total("remaining") == Decimal("99385.00")
    assert result.total("expired") == result.total("returned") == 0
    assert result.balanced


async def test_the_month_end_report_sums_the_period(engine: AsyncEngine) -> None:
    await _book_b1_b2(engine)

    async with engine.connect() as conn:
        lines = await month_end(conn, "2025-04")

    (line,) = lines
    assert line.billed == {"purchase": Decimal("100000.00"), "usage": 0}
    assert line.effective["usage"] == Decimal(615)
    assert line.credits["usage"] == Decimal(615)
    assert sum(b.credits for b in line.closing) == Decimal(99385)


async def test_an_export_carries_metadata_and_passes_the_own_checks(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await _book_b1_b2(engine)
    out = tmp_path / "2025-04.parquet"

    async with engine.connect() as conn:
        result = await export(conn, out, period="2025-04")
        everything = await export(conn, tmp_path / "all.csv", aggregate=True)

    assert result.rows == 4 and result.findings == []
    assert everything.findings == []
    metadata = json.loads(result.metadata.read_text())
    assert metadata["Schema"]["FocusVersion"] == "1.2"
    assert metadata["DataGenerator"]["DataGenerator"] == "focus-ledger"
    billed = next(
        c
        for c in metadata["Schema"]["ColumnDefinition"]
        if c["ColumnName"] == "BilledCost"
    )
    assert (billed["DataType"], billed["NumericPrecision"]) == ("DECIMAL", 38)
    table = pq.read_table(out)
    assert str(table.schema.field("EffectiveCost").type) == "decimal128(38, 12)"
    columns, rows = read_rows(tmp_path / "all.csv")
    assert columns[-1] == "x_AggregatedRows"
    assert len(rows) == everything.rows == 4  # nothing to fold: one row a SKU
