"""FOCUS rows to files, with the dataset metadata beside every file.

CSV: one header line of column names, FOCUS columns in spec order then `x_`;
decimals as plain text, date/times as `YYYY-MM-DDTHH:MM:SSZ`, JSON columns as
compact JSON text, and null as an empty field (CSV has no other null).

Parquet: decimals as `decimal128(38, 12)`, date/times as UTC timestamps in
seconds, JSON columns and text as strings; nulls are real nulls. Types are
declared, never inferred, so no reader sees a cost as a float.

Beside `rows.parquet` (or `.csv`) goes `rows.metadata.json`: FOCUS dataset
metadata with FocusVersion 1.2, the DataGenerator and its version, and a
definition of every column with its type and, for decimals, the numeric
precision and scale.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import money
from ledger.aggregation import AGGREGATED_COLUMNS, fold
from ledger.charges import COLUMNS, DATETIME_COLUMNS, DECIMAL_COLUMNS, JSON_COLUMNS
from ledger.conformance import Finding, check_output
from ledger.money import COST_PLACES
from ledger.periods import format_utc
from service.reports import basis_left, invoice_totals
from service.tables import ENTRIES

PARQUET_BATCH_ROWS = 10_000
EXPORT_CHUNK_ROWS = 5_000
FOCUS_VERSION = "1.2"
COUNT_COLUMNS = frozenset({"x_AggregatedRows"})


def schema(columns: Sequence[str] = COLUMNS) -> pa.Schema:
    fields = []
    for column in columns:
        if column in DECIMAL_COLUMNS:
            kind = pa.decimal128(38, COST_PLACES)
        elif column in DATETIME_COLUMNS:
            kind = pa.timestamp("s", tz="UTC")
        elif column in COUNT_COLUMNS:
            kind = pa.int64()
        else:
            kind = pa.string()
        fields.append(pa.field(column, kind, nullable=True))
    return pa.schema(fields)


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
    if column in COUNT_COLUMNS:
        return int(value)
    return value


async def write_rows(
    rows: AsyncIterable[dict[str, Any]] | Iterable[dict[str, Any]],
    path: Path,
    columns: Sequence[str] = COLUMNS,
) -> int:
    """Write rendered rows (see `ledger.charges.row_text`) by the file's suffix,
    and the dataset metadata beside them."""
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"{path}: write .csv or .parquet")
    source = rows if isinstance(rows, AsyncIterable) else _aiter(rows)
    if path.suffix == ".parquet":
        count = await _write_parquet(source, path, columns)
    else:
        count = await _write_csv(source, path, columns)
    metadata_path(path).write_text(
        json.dumps(dataset_metadata(columns), indent=2) + "\n", encoding="utf-8"
    )
    return count


async def _aiter(rows: Iterable[dict[str, Any]]) -> AsyncIterable[dict[str, Any]]:
    for row in rows:
        yield row


def metadata_path(path: Path) -> Path:
    return path.with_name(path.stem + ".metadata.json")


def dataset_metadata(columns: Sequence[str] = COLUMNS) -> dict[str, Any]:
    """FOCUS metadata: data generator, FOCUS version, column definitions."""
    definitions: list[dict[str, Any]] = []
    for column in columns:
        definition: dict[str, Any] = {"ColumnName": column}
        if column in DECIMAL_COLUMNS:
            definition |= {
                "DataType": "DECIMAL",
                "NumericPrecision": 38,
                "NumberScale": COST_PLACES,
            }
        elif column in DATETIME_COLUMNS:
            definition |= {"DataType": "DATETIME"}
        elif column in JSON_COLUMNS:
            definition |= {"DataType": "JSON", "ProviderTagPrefixes": []}
        elif column in COUNT_COLUMNS:
            definition |= {
                "DataType": "DECIMAL",
                "NumericPrecision": 18,
                "NumberScale": 0,
            }
        else:
            definition |= {
                "DataType": "STRING",
                "StringMaxLength": 256,
                "StringEncoding": "UTF-8",
            }
        definitions.append(definition)
    schema_id = hashlib.sha256(json.dumps(definitions).encode()).hexdigest()[:32]
    return {
        "DataGenerator": {
            "DataGenerator": "focus-ledger",
            "DataGeneratorVersion": _version(),
        },
        "Schema": {
            "SchemaId": schema_id,
            "FocusVersion": FOCUS_VERSION,
            "CreationDate": datetime.now(UTC).isoformat(timespec="seconds"),
            "ColumnDefinition": definitions,
        },
    }


def _version() -> str:
    try:
        return package_metadata.version("focus-ledger")
    except package_metadata.PackageNotFoundError:
        return "unknown"


async def _write_csv(
    rows: AsyncIterable[dict[str, Any]], path: Path, columns: Sequence[str]
) -> int:
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        async for row in rows:
            writer.writerow([csv_cell(column, row.get(column)) for column in columns])
            count += 1
    return count


async def _write_parquet(
    rows: AsyncIterable[dict[str, Any]], path: Path, columns: Sequence[str]
) -> int:
    count = 0
    types = schema(columns)
    with pq.ParquetWriter(path, types) as writer:
        batch: list[dict[str, Any]] = []
        async for row in rows:
            batch.append(row)
            if len(batch) >= PARQUET_BATCH_ROWS:
                writer.write_table(_table(batch, types))
                count += len(batch)
                batch = []
        if batch or count == 0:
            writer.write_table(_table(batch, types))
            count += len(batch)
    return count


def _table(rows: Iterable[dict[str, Any]], types: pa.Schema) -> pa.Table:
    rows = list(rows)
    columns = {
        name: pa.array(
            [_parquet_cell(name, row.get(name)) for row in rows],
            type=types.field(name).type,
        )
        for name in types.names
    }
    return pa.table(columns, schema=types)


def read_rows(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Read an exported file back as rendered text rows (for `check`)."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        rows = [
            {name: _text(name, value) for name, value in row.items()}
            for row in table.to_pylist()
        ]
        return list(table.column_names), rows
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = [{k: (v if v != "" else None) for k, v in row.items()} for row in reader]
        return list(reader.fieldnames or []), rows


def _text(column: str, value: Any) -> Any:
    if isinstance(value, Decimal):
        return money.text(value, 2 if column in ("BilledCost", "EffectiveCost") else 0)
    if isinstance(value, datetime):
        return format_utc(value)
    return value


@dataclass(slots=True)
class ExportResult:
    path: Path
    rows: int
    metadata: Path
    findings: list[Finding] = field(default_factory=list)


def _selection(
    period: str | None, account_id: str | None
) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = [ENTRIES.c.charge.is_not(None)]
    if period is not None:
        conditions.append(ENTRIES.c.billing_period == period)
    if account_id is not None:
        conditions.append(ENTRIES.c.account_id == account_id)
    return conditions


async def export_size(
    conn: AsyncConnection, period: str | None = None, account_id: str | None = None
) -> int:
    """How many rows `export` would read (for a progress bar)."""
    query = sa.select(sa.func.count()).where(*_selection(period, account_id))
    return int((await conn.execute(query)).scalar_one())


async def export(
    conn: AsyncConnection,
    path: Path,
    *,
    period: str | None = None,
    account_id: str | None = None,
    aggregate: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write the journal's rows (of one billing period, one account) and check them.

    The own conformance checks run on what was written; a whole export also
    checks every lot against the ledger, a period export every invoice.
    `progress` is told how many rows each chunk read from the database held.
    """
    conditions = _selection(period, account_id)
    rows: list[dict[str, Any]] = []
    after = 0
    while True:
        query = (
            sa.select(ENTRIES.c.seq, ENTRIES.c.charge)
            .where(*conditions, ENTRIES.c.seq > after)
            .order_by(ENTRIES.c.seq)
            .limit(EXPORT_CHUNK_ROWS)
        )
        chunk = (await conn.execute(query)).all()
        if not chunk:
            break
        rows += [{c: row.charge.get(c) for c in COLUMNS} for row in chunk]
        after = chunk[-1].seq
        if progress is not None:
            progress(len(chunk))
    columns: Sequence[str] = COLUMNS
    if aggregate:
        rows, columns = fold(rows), AGGREGATED_COLUMNS
    count = await write_rows(rows, path, columns)
    complete = period is None and account_id is None
    findings = check_output(
        list(columns),
        rows,
        basis_left=await basis_left(conn) if complete else None,
        invoice_totals=await invoice_totals(conn) if account_id is None else None,
    )
    return ExportResult(path, count, metadata_path(path), findings)
