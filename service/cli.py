"""The `focus-ledger` command line: one entry point for service, replay and ops.

Every command reads the same configuration as the service (see
`service.settings`). Exit codes: 0 success, 1 a handled failure (bad input,
unreachable database), 2 a usage error, 70 the service stopped on a fatal
condition.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from aiokafka.errors import KafkaError
from sqlalchemy.exc import ProgrammingError, SQLAlchemyError

from ledger.errors import LedgerError
from ledger.prices import PriceList
from service import database, logs
from service.database import create_engine
from service.demo import run_demo
from service.docs import regenerate
from service.ingest import EXIT_FATAL, Ingest
from service.queries import Balance, balances
from service.replay import replay as replay_file
from service.samples import write_demo_events
from service.settings import Settings, reference
from service.topics import ensure_topics
from service.views import balance_lines

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=__doc__,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("service.cli")

EXIT_FAILURE = 1


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
) -> None:
    """Run the main job end to end on the running Kafka and PostgreSQL."""

    settings = _settings()
    logs.configure("ERROR", "text")
    code = asyncio.run(run_demo(settings, events, timeout_s))
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
