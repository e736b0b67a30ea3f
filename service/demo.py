"""The main job, end to end, on a real Kafka broker and a real PostgreSQL.

`focus-ledger demo` (what `make demo` runs after starting the stack):

1. creates a fresh demo database and topics of its own run, so it can run
   again and again without meeting its earlier events;
2. replays the sample events through the embedded store, for the rows to
   expect;
3. starts `focus-ledger serve` as a separate process;
4. produces the sample events to the two input topics, each on its topic and
   keyed by billing account, as meters and a billing system would;
5. reads `focus.charges` (read_committed) until every expected row is there,
   and the dead-letter topic;
6. prints the balances, the FOCUS rows, the dead letters, and whether the
   service's rows equal the replay's, id for id and value for value;
7. stops the service with SIGTERM and reports how it exited.
"""

from __future__ import annotations

import csv
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import make_url

from ledger.charges import COLUMNS
from ledger.conformance import Finding, check_output
from ledger.prices import PriceList
from service import logs
from service.database import create_engine
from service.drive import (
    fresh_database,
    produce_lines,
    read_topic,
    start_service,
    stop_service,
    wait_claimed,
)
from service.exports import csv_cell, metadata_path, write_rows
from service.queries import balances
from service.replay import replay
from service.reports import basis_left, invoice_totals
from service.settings import REPO_ROOT, Settings
from service.topics import ensure_topics
from service.views import balance_lines, dead_letter_lines, row_lines

DEMO_DATABASE = "focus_ledger_demo"
DEMO_OUT = REPO_ROOT / "build" / "demo" / "focus.parquet"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _demo_settings(settings: Settings, run: str) -> Settings:
    url = make_url(settings.database_url).set(database=DEMO_DATABASE)
    overrides = {
        "database_url": url.render_as_string(hide_password=False),
        "kafka_bootstrap_servers": settings.kafka_bootstrap_servers,
        "group_id": f"demo-{run}",
        "topic_purchases": f"demo-{run}.credits.purchases",
        "topic_usage": f"demo-{run}.usage.events",
        "topic_charges": f"demo-{run}.focus.charges",
        "topic_dead_letter": f"demo-{run}.ledger.dead-letter",
        "topic_alerts": f"demo-{run}.ledger.alerts",
        "topic_relay_checkpoints": f"demo-{run}.ledger.relay-checkpoints",
        # The demo's short-lived service needs no HTTP API; without it, the
        # demo cannot clash with whatever else listens on the API's port.
        "api_port": 0,
    }
    return settings.model_copy(update=overrides)


async def run_demo(
    settings: Settings, events: Path | None, timeout_s: float, out: Path | None = None
) -> int:
    """Run the demo; returns the process exit code."""
    started = time.monotonic()
    run = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    demo = _demo_settings(settings, run)
    events = events or REPO_ROOT / "examples" / "events.jsonl"
    prices = PriceList.from_toml(demo.prices_path.read_text(encoding="utf-8"))
    _say(f"focus-ledger demo, run {run}")
    _say(f"  Kafka {demo.kafka_bootstrap_servers}, PostgreSQL database {DEMO_DATABASE}")
    _say(
        f"  events {_shown(events)}, price list {_shown(demo.prices_path)} "
        f"({prices.provider})"
    )

    await fresh_database(demo)
    await ensure_topics(demo)
    _say("  database migrated, topics created")

    with tempfile.TemporaryDirectory() as scratch:
        expected_path = Path(scratch) / "expected.csv"
        expected_run = await replay(events, prices, demo, out=expected_path)
        expected = _read_csv(expected_path)
    _say(f"  the embedded replay of the same events expects {len(expected)} rows")

    log_path = REPO_ROOT / ".stack" / f"demo-service-{run}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    service = start_service(demo, log_path)
    try:
        await wait_claimed(demo, service, timeout_s)
        shown_log = log_path.relative_to(REPO_ROOT)
        _say(f"  service running (pid {service.pid}), log {shown_log}")
        produced = await produce_lines(demo, events)
        _say(
            f"  produced {produced['purchases']} records to {demo.topic_purchases} and "
            f"{produced['usage']} to {demo.topic_usage}"
        )
        published = await read_topic(
            demo,
            demo.topic_charges,
            demo.topic_partitions,
            len(expected),
            timeout_s,
            service,
        )
        dead = await read_topic(
            demo, demo.topic_dead_letter, 1, len(expected_run.rejections), 15.0, service
        )
    finally:
        exit_code = stop_service(service)

    rows = [orjson.loads(record.value) for record in published]
    await _print_results(demo, rows, dead)
    same = _compare(expected, [_row_cells(row) for row in rows])
    findings = await _write_and_check(demo, rows, out or DEMO_OUT)
    _say()
    _say(
        f"service rows == replay rows: {'yes' if same else 'NO'} "
        f"({len(rows)} published, {len(expected)} expected)"
    )
    _say(
        f"own FOCUS checks on them: {len(findings) or 'all'} "
        f"{'finding(s)' if findings else 'passed'}"
    )
    for finding in findings[:10]:
        _say(f"  {finding.check}: {finding.subject}: {finding.detail}")
    _say(f"service stopped with SIGTERM, exit code {exit_code}")
    _say(f"demo took {time.monotonic() - started:.1f} s")
    _say()
    _say("The demo's ledger stays in its own database; ask it, for example:")
    _say(
        f"  DATABASE_URL={logs.safe_url(demo.database_url)} "
        ".venv/bin/focus-ledger balance acct-initech"
    )
    ok = same and not findings and exit_code == 0
    return 0 if ok and len(dead) == len(expected_run.rejections) else 1


async def _write_and_check(
    settings: Settings, rows: list[dict[str, Any]], out: Path
) -> list[Finding]:
    """Write the published rows (and their metadata) and run the own checks."""
    out.parent.mkdir(parents=True, exist_ok=True)
    await write_rows(rows, out)
    _say(f"  published rows written to {_shown(out)} with {_shown(metadata_path(out))}")
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            lots, invoices = await basis_left(conn), await invoice_totals(conn)
    finally:
        await engine.dispose()
    return check_output(list(COLUMNS), rows, lots, invoices)


def _shown(path: Path) -> Path:
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def _row_cells(row: dict[str, Any]) -> dict[str, str]:
    return {column: csv_cell(column, row.get(column)) for column in COLUMNS}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _compare(expected: list[dict[str, str]], rows: list[dict[str, str]]) -> bool:
    want = {row["x_ChargeId"]: row for row in expected}
    got = {row["x_ChargeId"]: row for row in rows}
    if len(got) != len(rows):
        _say(f"  {len(rows) - len(got)} rows published twice")
        return False
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differing = [cid for cid in set(want) & set(got) if want[cid] != got[cid]]
    for cid in missing[:5]:
        _say(
            f"  missing row {cid} ({want[cid]['x_ChargeKind']} "
            f"{want[cid]['x_SourceEventId']})"
        )
    for cid in extra[:5]:
        _say(f"  unexpected row {cid} ({got[cid]['x_ChargeKind']})")
    for cid in differing[:5]:
        columns = [c for c in COLUMNS if want[cid][c] != got[cid][c]]
        _say(f"  row {cid} differs in {', '.join(columns)}")
    return not (missing or extra or differing)


async def _print_results(
    settings: Settings, rows: list[dict[str, Any]], dead: list[Any]
) -> None:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            current = await balances(conn, datetime.now(UTC))
    finally:
        await engine.dispose()
    _say()
    _say("Balances now (credits usable; value = national cost basis left in lots)")
    for line in balance_lines(current):
        _say(line)
    _say()
    _say(f"FOCUS rows published on {settings.topic_charges} ({len(rows)})")
    for line in row_lines(rows):
        _say(line)
    _say()
    _say(f"Dead letters on {settings.topic_dead_letter} ({len(dead)})")
    for line in dead_letter_lines(dead):
        _say(line)
