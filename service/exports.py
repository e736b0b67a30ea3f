"""FOCUS rows to files: CSV for people, Parquet with explicit types for tools.

CSV: one header line of column names, FOCUS columns in spec order then `x_`;
decimals as plain text, date/times as `YYYY-MM-DDTHH:MM:SSZ`, JSON columns as
compact JSON text, and null as an empty field (CSV has no other null).

Parquet: decimals as `decimal128(38, 12)`, date/times as UTC timestamps in
seconds, JSON columns and text as strings; nulls are real nulls. Types are
declared, never inferred, so no reader sees a cost as a float.
"""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ledger.charges import COLUMNS, DATETIME_COLUMNS, DECIMAL_COLUMNS, JSON_COLUMNS
from ledger.money import COST_PLACES

PARQUET_BATCH_ROWS = 10_000


def _schema() -> pa.Schema:
    fields = []
    for column in COLUMNS:
        if column in DECIMAL_COLUMNS:
            kind = pa.decimal128(38, COST_PLACES)
        elif column in DATETIME_COLUMNS:
            kind = pa.timestamp("s", tz="UTC")
        else:
            kind = pa.string()
        fields.append(pa.field(column, kind, nullable=True))
    return pa.schema(fields)


SCHEMA = _schema()


def csv_cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in JSON_COLUMNS:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _parquet_cell(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in DECIMAL_COLUMNS:
        return Decimal(value)
    if column in DATETIME_COLUMNS:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    if column in JSON_COLUMNS:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


async def write_rows(rows: AsyncIterable[dict[str, Any]], path: Path) -> int:
    """Write rendered rows (see `ledger.charges.row_text`) by the file's suffix."""
    if path.suffix == ".parquet":
        return await _write_parquet(rows, path)
    if path.suffix == ".csv":
        return await _write_csv(rows, path)
    raise ValueError(f"{path}: write .csv or .parquet")


async def _write_csv(rows: AsyncIterable[dict[str, Any]], path: Path) -> int:
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        async for row in rows:
            writer.writerow([csv_cell(column, row.get(column)) for column in COLUMNS])
            count += 1
    return count


async def _write_parquet(rows: AsyncIterable[dict[str, Any]], path: Path) -> int:
    count = 0
    with pq.ParquetWriter(path, SCHEMA) as writer:
        batch: list[dict[str, Any]] = []
        async for row in rows:
            batch.append(row)
            if len(batch) >= PARQUET_BATCH_ROWS:
                writer.write_table(_table(batch))
                count += len(batch)
                batch = []
        if batch or count == 0:
            writer.write_table(_table(batch))
            count += len(batch)
    return count


def _table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    rows = list(rows)
    columns = {
        column: pa.array(
            [_parquet_cell(column, row.get(column)) for row in rows],
            type=SCHEMA.field(column).type,
        )
        for column in COLUMNS
    }
    return pa.table(columns, schema=SCHEMA)
