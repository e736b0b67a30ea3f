"""The `focus-ledger` command line: one entry point for service, replay and ops.

Every command reads the same configuration as the service (see
`service.settings`). Answers are tables for people; `--json` prints the
same answer for scripts, with decimals as strings. Exit codes:

    0   success
    1   a handled failure (unreachable database or broker, unreadable file)
    2   a usage error (a bad option or value)
    3   nothing found (no such account, invoice or dead letter)
    4   the FOCUS checks found problems in what was checked or exported
    70  the service stopped on a fatal condition
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from aiokafka.errors import KafkaError
from sqlalchemy.exc import ProgrammingError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.conformance import Finding, check_output
from ledger.errors import LedgerError
from ledger.prices import PriceList
from service import database, logs, queries
from service.database import create_engine
from service.deadletters import (
    DeadLetter,
    ResubmitError,
    read_dead_letters,
    resubmit,
)
from service.demo import run_demo
from service.docs import regenerate
from service.exports import ExportResult, export, export_size, read_rows
from service.ingest import EXIT_FATAL, Ingest
from service.queries import Balance, EntryView, LotView, balances
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
    dead_letter_table,
    history_lines,
    lot_lines,
    period_lines,
    reconciliation_lines,
)

T = TypeVar("T")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=__doc__,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("service.cli")

EXIT_FAILURE = 1
EXIT_NOT_FOUND = 3
EXIT_FINDINGS = 4
JsonFlag = Annotated[bool, typer.Option("--json", help="JSON for scripts")]
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
    _tune_garbage_collector()
    asyncio.run(ingest.app.run())
    if ingest.state.fatal:
        raise typer.Exit(EXIT_FATAL)


# Allocations between two young-generation collections. The default (700)
# makes a batch of thousands of events run hundreds of collections, and each
# full one walks every object the process holds; this keeps cyclic garbage
# bounded while spending a few per cent of the time on it instead of a fifth.
GC_YOUNG_ALLOCATIONS_MAX = 50_000


def _tune_garbage_collector() -> None:
    """Move what start-up created out of the collector's way, and collect
    less often: the service's objects are mostly short-lived and acyclic."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_ALLOCATIONS_MAX, 20, 100)


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
    _tune_garbage_collector()
    if out is not None and out.suffix not in (".csv", ".parquet"):
        raise typer.BadParameter("--out must end in .csv or .parquet")
    with events.open("rb") as handle:
        lines = sum(1 for _ in handle)
    with _progress(lines, "replaying") as bar:
        result = asyncio.run(
            replay_file(
                events,
                price_list,
                settings,
                out=out,
                database_url=database,
                as_of=_parse_time(as_of),
                progress=bar.update if bar is not None else None,
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
    as_json: JsonFlag = False,
) -> None:
    """Print balances from the database: credits usable, owed, value left."""

    settings = _settings()
    moment = _parse_time(as_of) or datetime.now(UTC)

    async def run(conn: AsyncConnection) -> list[Balance]:
        return await balances(conn, moment, account)

    found = _read(settings, run)
    if account is not None and not found:
        _not_found(f"no ledger for billing account {account}")
    if as_json:
        _echo_json({"as_of": moment.isoformat(), "balances": found})
        return
    _print_balances(found)


@app.command()
def lots(
    account: Annotated[str, typer.Argument(help="billing account id")],
    all_lots: Annotated[
        bool, typer.Option("--all", help="also spent, expired and refunded lots")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """An account's lots in FIFO order: what is left, its cost, its invoice."""

    async def run(conn: AsyncConnection) -> list[LotView]:
        return await queries.lots(conn, account, include_closed=all_lots)

    found = _read(_settings(), run)
    if not found and not all_lots and not _read(_settings(), _any_lot(account)):
        _not_found(f"no lots for billing account {account}")
    if as_json:
        _echo_json({"lots": found})
        return
    for line in lot_lines(found):
        typer.echo(line)


@app.command()
def history(
    account: Annotated[str, typer.Argument(help="billing account id")],
    after: Annotated[int, typer.Option(help="start after this seq", min=0)] = 0,
    limit: Annotated[
        int,
        typer.Option(help="lines per page", min=1, max=queries.HISTORY_PAGE_MAX),
    ] = 50,
    as_json: JsonFlag = False,
) -> None:
    """An account's journal in ledger order, a page at a time."""

    async def run(conn: AsyncConnection) -> tuple[list[EntryView], int | None]:
        return await queries.history(conn, account, after, limit)

    page, following = _read(_settings(), run)
    if not page and after == 0:
        _not_found(f"no journal for billing account {account}")
    if as_json:
        _echo_json({"entries": page, "next": following})
        return
    for line in history_lines(page):
        typer.echo(line)
    if following is not None:
        typer.echo(f"  more: focus-ledger history {account} --after {following}")


@app.command("dead-letters")
def dead_letters(
    reason: Annotated[str | None, typer.Option(help="only this reason")] = None,
    resubmit_offsets: Annotated[
        list[int] | None,
        typer.Option(
            "--resubmit",
            help="offset of a dead letter to send back to its input topic "
            "(repeat for more); do this after fixing the cause",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the dead-letter topic with reasons, or re-submit chosen records."""
    settings = _settings()
    if resubmit_offsets:
        try:
            done = asyncio.run(resubmit(settings, resubmit_offsets))
        except ResubmitError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(EXIT_NOT_FOUND) from None
        if as_json:
            _echo_json({"resubmitted": done})
            return
        for item in done:
            typer.echo(
                f"dead letter {item.dead_letter_offset} sent to "
                f"{item.topic}[{item.partition}]@{item.offset}"
            )
        return
    letters = asyncio.run(read_dead_letters(settings, reason))
    if as_json:
        _echo_json({"dead_letters": [_letter_data(letter) for letter in letters]})
        return
    typer.echo(f"{settings.topic_dead_letter}: {len(letters)} dead letter(s)")
    for line in dead_letter_table(letters):
        typer.echo(line)


def _letter_data(letter: DeadLetter) -> dict[str, Any]:
    return {
        "offset": letter.offset,
        "reason": letter.reason,
        "detail": letter.detail,
        "topic": letter.topic,
        "partition": letter.partition,
        "source_offset": letter.source_offset,
        "event_id": letter.event_id,
        "event_source": letter.event_source,
        "account_id": letter.account_id,
        "value_bytes": len(letter.value),
        "truncated": letter.truncated,
        "timestamp_ms": letter.timestamp_ms,
    }


def _any_lot(account: str) -> Callable[[AsyncConnection], Awaitable[bool]]:
    async def run(conn: AsyncConnection) -> bool:
        return bool(await queries.lots(conn, account, include_closed=True))

    return run


def _read(settings: Settings, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run one read-only query on a connection of its own."""

    async def run() -> T:
        engine = create_engine(settings)
        try:
            async with engine.connect() as conn:
                return await query(conn)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(as_data(value), indent=2, default=str))


def _not_found(message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(EXIT_NOT_FOUND)


def _progress(total: int, label: str) -> Any:
    """A progress bar on a terminal's stderr; nothing when output is piped."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext(None)
    return typer.progressbar(length=total, label=label, file=sys.stderr)


@app.command("export")
def export_rows(
    out: Annotated[
        Path | None,
        typer.Option(help="file to write; its suffix (.csv, .parquet) is the format"),
    ] = None,
    period: Annotated[
        str | None, typer.Option(help="billing period, e.g. 2025-04")
    ] = None,
    billing_account: Annotated[str | None, typer.Option(help="one account")] = None,
    file_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="csv or parquet; without --out the file is focus-PERIOD.FORMAT",
        ),
    ] = None,
    aggregate: Annotated[bool, typer.Option(help="fold usage rows")] = False,
) -> None:
    """Export FOCUS rows from the ledger, with metadata, and check them."""
    if file_format is not None and file_format not in ("csv", "parquet"):
        raise typer.BadParameter("--format is csv or parquet")
    if out is None:
        if file_format is None:
            raise typer.BadParameter("give --out FILE or --format csv|parquet")
        out = Path(f"focus-{period or 'all'}.{file_format}")
    if out.suffix not in (".csv", ".parquet"):
        raise typer.BadParameter("--out must end in .csv or .parquet")
    if file_format is not None and out.suffix != f".{file_format}":
        raise typer.BadParameter(f"--out {out} is not a .{file_format} file")
    if period is not None and not PERIOD.match(period):
        raise typer.BadParameter("--period is YYYY-MM")

    async def run(conn: AsyncConnection) -> ExportResult:
        total = await export_size(conn, period, billing_account)
        with _progress(total, "exporting") as bar:
            return await export(
                conn,
                out,
                period=period,
                account_id=billing_account,
                aggregate=aggregate,
                progress=bar.update if bar is not None else None,
            )

    result = _read(_settings(), run)
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
    raise typer.Exit(EXIT_FINDINGS)


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
        _not_found(f"no rows carry invoice {invoice}")
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
            "schema, or an older one; run `focus-ledger migrate` (the demo keeps "
            "its own database, focus_ledger_demo)"
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
