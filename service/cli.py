"""The `focus-ledger` command line: one entry point for service, replay and ops.

Every command reads the same configuration as the service (see
`service.settings`). Exit codes: 0 success, 1 a handled failure (bad input,
unreachable database), 2 a usage error, 70 the service stopped on a fatal
condition.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from aiokafka.errors import KafkaError
from sqlalchemy.exc import ProgrammingError, SQLAlchemyError

from ledger.conformance import Finding, check_output
from ledger.errors import LedgerError
from ledger.prices import PriceList
from service import database, logs
from service.database import create_engine
from service.demo import run_demo
from service.docs import regenerate
from service.exports import ExportResult, export, read_rows
from service.ingest import EXIT_FATAL, Ingest
from service.queries import Balance, balances
from service.replay import replay as replay_file
from service.reports import (
    NoSuchInvoiceError,
    basis_left,
    invoice_totals,
    month_end,
    reconcile_invoice,
)
from service.samples import write_demo_events
from service.settings import Settings, reference
from service.topics import ensure_topics
from service.views import (
    as_data,
    balance_lines,
    period_lines,
    reconciliation_lines,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=__doc__,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("service.cli")

EXIT_FAILURE = 1
PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def _settings() -> Settings:
    return Settings()


def _prices(settings: Settings, path: Path | None = None) -> PriceList:
    source = path or settings.prices_path
    try:
        return PriceList.from_toml(source.read_text(encoding="utf-8"))
    except OSError as error:
        raise typer.BadParameter(f"cannot read price list {source}: {error}") from None


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise typer.BadParameter("times need a UTC offset, e.g. 2026-11-30T23:00:00Z")
    return moment.astimezone(UTC)


@app.command()
def serve() -> None:
    """Run the service: consume, book, publish, until SIGTERM."""

    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)
    prices = _prices(settings)
    log.info(
        "configuration loaded",
        extra={
            "database": logs.safe_url(settings.database_url),
            "kafka": settings.kafka_bootstrap_servers,
            "price_list": str(settings.prices_path),
            "skus": len(prices.skus),
        },
    )
    ingest = Ingest(settings, prices, create_engine(settings))
    asyncio.run(ingest.app.run())
    if ingest.state.fatal:
        raise typer.Exit(EXIT_FATAL)


@app.command()
def migrate() -> None:
    """Create or upgrade the PostgreSQL schema."""

    settings = _settings()
    logs.configure(settings.log_level, "text")
    database.migrate(settings.database_url)
    typer.echo(f"schema is current on {logs.safe_url(settings.database_url)}")


@app.command()
def topics() -> None:
    """Create the Kafka topics if missing and check their layout."""

    settings = _settings()
    counts = asyncio.run(ensure_topics(settings))
    for topic, partitions in sorted(counts.items()):
        typer.echo(f"{topic}: {partitions} partitions")


@app.command()
def replay(
    events: Annotated[Path, typer.Argument(help="JSON Lines file of CloudEvents")],
    prices: Annotated[Path | None, typer.Option(help="price list (TOML)")] = None,
    out: Annotated[
        Path | None, typer.Option(help="write FOCUS rows (.csv/.parquet)")
    ] = None,
    database: Annotated[
        str | None, typer.Option(help="database URL; default: a throwaway SQLite")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option(help="expire lots due by this time")
    ] = None,
) -> None:
    """Replay a file of events through the ledger and print the balances."""

    settings = _settings()
    logs.configure("ERROR", "text")
    price_list = _prices(settings, prices)
    if out is not None and out.suffix not in (".csv", ".parquet"):
        raise typer.BadParameter("--out must end in .csv or .parquet")
    result = asyncio.run(
        replay_file(
            events,
            price_list,
            settings,
            out=out,
            database_url=database,
            as_of=_parse_time(as_of),
        )
    )
    typer.echo(
        f"{result.records} records: {result.applied} applied, "
        f"{result.duplicates} duplicate(s), {result.dead_letters} dead letter(s), "
        f"{result.late} late"
    )
    for line, reason, event_id in result.rejections:
        typer.echo(f"  line {line}: {reason} (event {event_id or '-'})")
    _print_balances(result.balances)
    if out is not None:
        typer.echo(f"{result.rows} FOCUS rows written to {out}")


@app.command()
def balance(
    account: Annotated[str | None, typer.Argument(help="billing account id")] = None,
    as_of: Annotated[str | None, typer.Option(help="instant (RFC 3339)")] = None,
) -> None:
    """Print balances from the database."""

    settings = _settings()
    moment = _parse_time(as_of) or datetime.now(UTC)

    async def run() -> None:
        engine = create_engine(settings)
        try:
            async with engine.connect() as conn:
                _print_balances(await balances(conn, moment, account))
        finally:
            await engine.dispose()

    asyncio.run(run())


@app.command("export")
def export_rows(
    out: Annotated[Path, typer.Option(help="file to write (.csv or .parquet)")],
    period: Annotated[
        str | None, typer.Option(help="billing period, e.g. 2025-04")
    ] = None,
    billing_account: Annotated[str | None, typer.Option(help="one account")] = None,
    aggregate: Annotated[bool, typer.Option(help="fold usage rows")] = False,
) -> None:
    """Export FOCUS rows from the ledger, with metadata, and check them."""
    if out.suffix not in (".csv", ".parquet"):
        raise typer.BadParameter("--out must end in .csv or .parquet")
    if period is not None and not PERIOD.match(period):
        raise typer.BadParameter("--period is YYYY-MM")

    async def run() -> ExportResult:
        engine = create_engine(_settings())
        try:
            async with engine.connect() as conn:
                return await export(
                    conn,
                    out,
                    period=period,
                    account_id=billing_account,
                    aggregate=aggregate,
                )
        finally:
            await engine.dispose()

    result = asyncio.run(run())
    typer.echo(f"{result.rows} rows written to {out}, metadata in {result.metadata}")
    _report_findings(result.findings)


@app.command()
def check(
    path: Annotated[Path, typer.Argument(help="an exported .csv or .parquet file")],
    ledger: Annotated[
        bool, typer.Option(help="also check lots and invoices against the database")
    ] = True,
) -> None:
    """Check a FOCUS file with the rules the official validator does not check."""
    columns, rows = read_rows(path)

    async def totals() -> tuple[dict[str, Decimal], dict[str, Decimal]]:
        engine = create_engine(_settings())
        try:
            async with engine.connect() as conn:
                return await basis_left(conn), await invoice_totals(conn)
        finally:
            await engine.dispose()

    lots, invoices = asyncio.run(totals()) if ledger else (None, None)
    typer.echo(f"{len(rows)} rows, {len(columns)} columns")
    _report_findings(check_output(columns, rows, lots, invoices))


def _report_findings(findings: list[Finding]) -> None:
    if not findings:
        typer.echo("own checks: all passed")
        return
    for finding in findings[:50]:
        typer.echo(f"  {finding.check}: {finding.subject}: {finding.detail}")
    typer.echo(f"own checks: {len(findings)} finding(s)")
    raise typer.Exit(EXIT_FAILURE)


@app.command()
def reconcile(
    invoice: Annotated[str | None, typer.Option(help="an invoice id")] = None,
    period: Annotated[
        str | None, typer.Option(help="month-end report, YYYY-MM")
    ] = None,
    billing_account: Annotated[str | None, typer.Option(help="one account")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts")] = False,
) -> None:
    """Reconcile an invoice, or report a billing period per account."""
    if (invoice is None) == (period is None):
        raise typer.BadParameter("give --invoice ID or --period YYYY-MM")

    async def run() -> Any:
        engine = create_engine(_settings())
        try:
            async with engine.connect() as conn:
                if invoice is not None:
                    return await reconcile_invoice(conn, invoice)
                return await month_end(conn, period or "", billing_account)
        finally:
            await engine.dispose()

    try:
        result = asyncio.run(run())
    except NoSuchInvoiceError:
        typer.echo(f"no rows carry invoice {invoice}", err=True)
        raise typer.Exit(EXIT_FAILURE) from None
    if as_json:
        typer.echo(json.dumps(as_data(result), indent=2, default=str))
        return
    lines = (
        reconciliation_lines(result) if invoice is not None else period_lines(result)
    )
    for line in lines:
        typer.echo(line)


@app.command()
def config(
    markdown: Annotated[
        bool, typer.Option(help="print the reference table of every setting")
    ] = False,
) -> None:
    """Print the configuration in use (secrets masked)."""
    if markdown:
        typer.echo(reference(), nl=False)
        return
    for name, value in Settings().shown().items():
        typer.echo(f"FOCUS_LEDGER_{name.upper()}={value}")


@app.command()
def docs() -> None:
    """Rewrite the generated parts of docs/ (schemas, tables) from the code."""
    for path in regenerate():
        typer.echo(f"wrote {path}")


@app.command("sample-events")
def sample_events(
    out: Annotated[Path, typer.Option(help="where to write")] = Path(
        "examples/events.jsonl"
    ),
) -> None:
    """Write the demo's sample events (a curated month for five accounts)."""

    typer.echo(f"{write_demo_events(str(out))} lines written to {out}")


@app.command()
def demo(
    events: Annotated[Path | None, typer.Option(help="JSON Lines events")] = None,
    timeout_s: Annotated[float, typer.Option(help="wait at most this long")] = 120.0,
    out: Annotated[
        Path | None, typer.Option(help="where to write the published rows")
    ] = None,
) -> None:
    """Run the main job end to end on the running Kafka and PostgreSQL."""
    settings = _settings()
    logs.configure("ERROR", "text")
    code = asyncio.run(run_demo(settings, events, timeout_s, out))
    raise typer.Exit(code)


def _print_balances(rows: list[Balance]) -> None:
    for line in balance_lines(rows):
        typer.echo(line)


def main() -> None:
    """Run a command; failures the user can act on become one line, exit 1."""
    try:
        app()
    except (LedgerError, SQLAlchemyError, KafkaError, OSError) as error:
        typer.echo(f"error: {explain(error)}", err=True)
        sys.exit(EXIT_FAILURE)


def explain(error: BaseException) -> str:
    """One line that says what failed and what to do about it."""
    settings = Settings()
    if isinstance(error, ProgrammingError) and "does not exist" in str(error.orig):
        return (
            f"the database {logs.safe_url(settings.database_url)} has no ledger "
            "schema; run `focus-ledger migrate` (the demo keeps its own database, "
            "focus_ledger_demo)"
        )
    if isinstance(error, SQLAlchemyError | ConnectionError) or (
        isinstance(error, OSError)
        and error.errno in (errno.ECONNREFUSED, None)
        and not isinstance(error, FileNotFoundError)
    ):
        reason = getattr(error, "orig", None) or error
        return (
            f"cannot use the database {logs.safe_url(settings.database_url)}: "
            f"{str(reason).splitlines()[0]}"
        )
    if isinstance(error, KafkaError):
        return f"Kafka at {settings.kafka_bootstrap_servers}: {error}"
    if isinstance(error, FileNotFoundError):
        return f"no such file: {error.filename}"
    return str(error)
