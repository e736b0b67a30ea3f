"""The HTTP API: balances, lots, history, invoices, reports; health and metrics.

Served by `focus-ledger serve` next to the consumer (same process, same
database engine), documented as OpenAPI at `/openapi.json` and `/docs`.

Access. Every endpoint but `/healthz` and `/readyz` needs
`Authorization: Bearer <token>`. Tokens come from configuration
(`FOCUS_LEDGER_API_TOKENS`, or one per line in `FOCUS_LEDGER_API_TOKENS_FILE`)
as `name:scope:secret`; the scope is `read` or `admin` (admin may also read).
No token is 401, a token without the scope is 403. Tokens are compared in
constant time and never logged; the log names the token's `name`. The ops page
at `/ui` is served without a token because it carries no data: it asks for a
token and sends it with every API call it makes, which need one like any other.

Errors are RFC 9457 problem details (`application/problem+json`). Parameters
are validated by their declared types and bounds; queries are built by
SQLAlchemy, never from strings.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException

from ledger.errors import LedgerError
from ledger.events import ID_PATTERN
from service import queries, reports
from service.metrics import Metrics
from service.settings import Settings
from service.views import as_data

log = logging.getLogger(__name__)

PERIOD_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"
UI_PAGE = Path(__file__).parent / "ui" / "index.html"
# The page runs only its own inline script and style and talks only to this
# origin, so an injected tag could neither load code nor send data elsewhere.
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
}
Account = Annotated[str, PathParam(pattern=ID_PATTERN, max_length=128)]


class Scope(StrEnum):
    READ = "read"
    ADMIN = "admin"


class TokenError(LedgerError):
    """The API token configuration is malformed; the service will not start."""


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    scope: Scope
    secret: str


def load_tokens(settings: Settings) -> list[Token]:
    """Tokens from the setting and the secrets file, checked.

    Raises:
        TokenError: a line is not `name:scope:secret`, or a secret is short.
    """
    lines = [item for item in settings.api_tokens.split(",") if item.strip()]
    if settings.api_tokens_file is not None:
        text = settings.api_tokens_file.read_text(encoding="utf-8")
        lines += [
            line
            for line in text.splitlines()
            if line.strip() and not line.startswith("#")
        ]
    tokens = []
    for line in lines:
        parts = line.strip().split(":", 2)
        if len(parts) != 3 or parts[1] not in set(Scope):
            raise TokenError("an API token is `name:read|admin:secret`")
        if len(parts[2]) < 16:
            raise TokenError(
                f"the secret of API token {parts[0]!r} is under 16 characters"
            )
        tokens.append(Token(parts[0], Scope(parts[1]), parts[2]))
    return tokens


class ServiceProbe:
    """What the API may ask of the running consumer (nothing in a bare API)."""

    def readiness(self) -> dict[str, Any]:
        return {"consumer": "not running in this process"}

    def ready(self) -> bool:
        return True


def problem(status: int, title: str, detail: str, instance: str) -> JSONResponse:
    return JSONResponse(
        {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": instance,
        },
        status_code=status,
        media_type="application/problem+json",
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
    )


def build_api(
    engine: AsyncEngine,
    settings: Settings,
    metrics: Metrics | None = None,
    probe: ServiceProbe | None = None,
) -> FastAPI:
    """The FastAPI application over one engine."""
    tokens = load_tokens(settings)
    page = UI_PAGE.read_text(encoding="utf-8")
    probe = probe or ServiceProbe()
    metrics = metrics or Metrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(
        title="focus-ledger",
        version="0.1.0",
        description="Balances, lots, journal and FOCUS 1.2 rows of a prepaid-credit "
        "ledger. Bearer tokens; errors are RFC 9457 problem details.",
        lifespan=lifespan,
    )

    def authorize(scope: Scope) -> Callable[[Request], Awaitable[Token]]:
        async def check(request: Request) -> Token:
            header = request.headers.get("authorization", "")
            scheme, _, secret = header.partition(" ")
            token = next(
                (
                    t
                    for t in tokens
                    if scheme.lower() == "bearer"
                    and hmac.compare_digest(t.secret.encode(), secret.strip().encode())
                ),
                None,
            )
            if token is None:
                raise HTTPException(401, "a valid bearer token is needed")
            if scope is Scope.ADMIN and token.scope is not Scope.ADMIN:
                raise HTTPException(403, f"token {token.name!r} may not do this")
            return token

        return check

    reader = Depends(authorize(Scope.READ))
    admin = Depends(authorize(Scope.ADMIN))

    async def connection() -> AsyncIterator[AsyncConnection]:
        async with engine.connect() as conn:
            yield conn

    db = Depends(connection)

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, error: StarletteHTTPException) -> Response:
        return problem(
            error.status_code,
            _title(error.status_code),
            str(error.detail),
            request.url.path,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return problem(
            422,
            "Invalid parameter",
            f"{where}: {first.get('msg', '')}",
            request.url.path,
        )

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> Response:
        """Ready: the database answers, partitions are assigned, not stuck."""
        checks: dict[str, Any] = dict(probe.readiness())
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as error:
            checks["database"] = f"unreachable: {type(error).__name__}"
        ready = checks["database"] == "ok" and probe.ready()
        return JSONResponse(
            {"ready": ready, **checks}, status_code=200 if ready else 503
        )

    @app.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    async def ops_page() -> HTMLResponse:
        """The ops page, served without a token because it carries no data.

        Every figure on it comes from the API calls the page makes with the
        token the user enters, and each of those needs the token as usual.
        """
        return HTMLResponse(page, headers=UI_HEADERS)

    @app.get("/metrics", tags=["health"], dependencies=[reader])
    async def prometheus() -> Response:
        return Response(
            generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    @app.get("/v1/accounts", tags=["accounts"], dependencies=[reader])
    async def list_accounts(
        conn: AsyncConnection = db,
        after: Annotated[str, Query(max_length=128)] = "",
        limit: Annotated[int, Query(ge=1, le=queries.HISTORY_PAGE_MAX)] = 100,
    ) -> dict[str, Any]:
        found = await queries.account_ids(conn, after, limit)
        return {"accounts": found, "next": found[-1] if len(found) == limit else None}

    @app.get(
        "/v1/accounts/{account_id}/balance", tags=["accounts"], dependencies=[reader]
    )
    async def balance(
        account_id: Account,
        conn: AsyncConnection = db,
        as_of: Annotated[datetime | None, Query(description="RFC 3339 instant")] = None,
    ) -> dict[str, Any]:
        """Credits and national value left, per currency, now or as of an instant."""
        moment = _aware(as_of) if as_of else datetime.now(UTC)
        found = await queries.balances(conn, moment, account_id)
        if not found:
            raise HTTPException(404, f"no ledger for billing account {account_id!r}")
        return {"as_of": moment.isoformat(), "balances": as_data(found)}

    @app.get("/v1/accounts/{account_id}/lots", tags=["accounts"], dependencies=[reader])
    async def account_lots(
        account_id: Account,
        conn: AsyncConnection = db,
        include_closed: bool = False,
    ) -> dict[str, Any]:
        """Lots in FIFO order: remaining credits and basis, unit cost, expiry."""
        return {"lots": as_data(await queries.lots(conn, account_id, include_closed))}

    @app.get(
        "/v1/accounts/{account_id}/history", tags=["accounts"], dependencies=[reader]
    )
    async def account_history(
        account_id: Account,
        conn: AsyncConnection = db,
        cursor: Annotated[int, Query(ge=0, description="`next` of the last page")] = 0,
        limit: Annotated[int, Query(ge=1, le=queries.HISTORY_PAGE_MAX)] = 100,
    ) -> dict[str, Any]:
        """The journal in ledger order, a bounded page at a time."""
        page, following = await queries.history(conn, account_id, cursor, limit)
        return {"entries": as_data(page), "next": following}

    @app.get(
        "/v1/accounts/{account_id}/charges", tags=["accounts"], dependencies=[reader]
    )
    async def account_charges(
        account_id: Account,
        conn: AsyncConnection = db,
        limit: Annotated[int, Query(ge=1, le=queries.HISTORY_PAGE_MAX)] = 50,
    ) -> dict[str, Any]:
        """The latest FOCUS rows of the account, newest first."""
        return {"rows": await queries.recent_rows(conn, account_id, limit)}

    @app.get(
        "/v1/accounts/{account_id}/burndown", tags=["accounts"], dependencies=[reader]
    )
    async def account_burndown(
        account_id: Account, conn: AsyncConnection = db
    ) -> dict[str, Any]:
        """Remaining credits per lot over time, for the ops page's chart."""
        return {"lots": as_data(await queries.burndown(conn, account_id))}

    @app.get(
        "/v1/invoices/{invoice_id}/reconciliation",
        tags=["invoices"],
        dependencies=[reader],
    )
    async def invoice_reconciliation(
        invoice_id: Annotated[str, PathParam(pattern=ID_PATTERN, max_length=128)],
        conn: AsyncConnection = db,
    ) -> dict[str, Any]:
        """Where the invoice's money went (the same as `focus-ledger reconcile`)."""
        try:
            result = await reports.reconcile_invoice(conn, invoice_id)
        except reports.NoSuchInvoiceError:
            raise HTTPException(404, f"no rows carry invoice {invoice_id!r}") from None
        return as_data(result)  # type: ignore[no-any-return]

    @app.get("/v1/periods/{period}/report", tags=["invoices"], dependencies=[reader])
    async def period_report(
        period: Annotated[str, PathParam(pattern=PERIOD_PATTERN)],
        conn: AsyncConnection = db,
        billing_account: Annotated[
            str | None, Query(pattern=ID_PATTERN, max_length=128)
        ] = None,
    ) -> dict[str, Any]:
        """The month-end report of one billing period, per billing account."""
        return {
            "accounts": as_data(await reports.month_end(conn, period, billing_account))
        }

    @app.get("/v1/config", tags=["admin"], dependencies=[admin])
    async def configuration() -> dict[str, str]:
        """The settings in use, secrets masked (admin tokens only)."""
        return settings.shown()

    return app


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise HTTPException(422, "as_of needs a UTC offset, e.g. 2025-04-30T00:00:00Z")
    return moment.astimezone(UTC)


def _title(status: int) -> str:
    return {
        400: "Bad request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not found",
        405: "Method not allowed",
        422: "Invalid parameter",
        503: "Unavailable",
    }.get(status, "Error")
