"""The HTTP API over a real PostgreSQL ledger: access, answers, errors.

The ledger is the demo month (`examples/events.jsonl`) booked by the file
replay into PostgreSQL; the API is called in process through httpx's ASGI
transport, so every request runs the real routing, validation and queries.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.api import build_api
from service.database import create_engine
from service.replay import replay
from service.reports import reconcile_invoice
from service.settings import Settings
from service.views import as_data
from tests.factories import sample_prices
from tests.integration.conftest import DEMO_END, DEMO_EVENTS

pytestmark = pytest.mark.integration

READER = "ops:read:r-0123456789abcdef"
ADMIN = "root:admin:a-0123456789abcdef"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.split(':', 2)[2]}"}


@pytest.fixture(scope="module")
async def api(demo_month_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(api_tokens=f"{READER},{ADMIN}")
    engine = create_engine(settings, demo_month_url)
    yield build_api(engine, settings)
    await engine.dispose()


@pytest.fixture
async def client(api: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http


def _protected_paths(app: FastAPI) -> list[str]:
    """Every GET route of the OpenAPI document but health, with sample values."""
    values = {"account_id": "acct-acme", "invoice_id": "X", "period": "2026-11"}
    paths = []
    for path, methods in app.openapi()["paths"].items():
        if "get" in methods and path not in ("/healthz", "/readyz"):
            paths.append(path.format(**values))
    return paths


async def test_every_endpoint_but_health_answers_401_without_a_token(
    api: FastAPI, client: httpx.AsyncClient
) -> None:
    paths = _protected_paths(api)

    answers = {path: await client.get(path) for path in paths}
    wrong = {
        path: await client.get(path, headers={"Authorization": "Bearer not-a-token"})
        for path in paths
    }

    assert len(paths) >= 8
    assert {p: r.status_code for p, r in answers.items()} == dict.fromkeys(paths, 401)
    assert {p: r.status_code for p, r in wrong.items()} == dict.fromkeys(paths, 401)
    first = answers[paths[0]]
    assert first.headers["content-type"] == "application/problem+json"
    assert first.headers["www-authenticate"] == "Bearer"
    assert first.json()["status"] == 401


async def test_a_read_token_gets_403_from_an_admin_endpoint(
    client: httpx.AsyncClient,
) -> None:
    as_reader = await client.get("/v1/config", headers=bearer(READER))
    as_admin = await client.get("/v1/config", headers=bearer(ADMIN))

    assert as_reader.status_code == 403
    assert as_reader.json()["title"] == "Forbidden"
    assert "ops" in as_reader.json()["detail"]
    assert as_admin.status_code == 200
    assert "r-0123456789abcdef" not in as_admin.text
    assert as_admin.json()["api_tokens"] == "ops:read:***,root:admin:***"


async def test_health_needs_no_token(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    ready = await client.get("/readyz")

    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["database"] == "ok"


@pytest.mark.parametrize(
    "instant",
    [
        "2026-10-01T08:59:59Z",
        "2026-10-01T09:00:00Z",
        "2026-10-31T00:00:00Z",
        "2026-11-10T12:00:00Z",
        "2026-11-17T02:00:00Z",
        "2026-11-21T00:00:00Z",
        DEMO_END,
    ],
)
async def test_a_balance_as_of_an_instant_equals_a_replay_up_to_it(
    client: httpx.AsyncClient, tmp_path: Path, instant: str
) -> None:
    moment = datetime.fromisoformat(instant)
    lines = [
        line
        for line in DEMO_EVENTS.read_text().splitlines()
        if (time := _time_of(line)) is None or time <= moment
    ]
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(lines) + "\n")
    replayed = await replay(
        partial,
        sample_prices(),
        Settings(ordering_hold_max_ms=0),
        as_of=moment,
    )
    expected = {
        (b.account_id, b.currency): (b.credits, b.value, b.owed_credits)
        for b in replayed.balances
    }

    answered: dict[tuple[str, str], tuple[Decimal, ...]] = {}
    for account_id in {account for account, _ in expected}:
        response = await client.get(
            f"/v1/accounts/{account_id}/balance",
            params={"as_of": instant},
            headers=bearer(READER),
        )
        assert response.status_code == 200, response.text
        for line in response.json()["balances"]:
            answered[(line["account_id"], line["currency"])] = (
                Decimal(line["credits"]),
                Decimal(line["value"]),
                Decimal(line["owed_credits"]),
            )

    assert answered == expected


def _time_of(line: str) -> datetime | None:
    """An event's time, or None for a line that is not an event (poison)."""
    try:
        return datetime.fromisoformat(json.loads(line)["time"])
    except (ValueError, KeyError, TypeError):
        return None


async def test_lots_show_what_is_left_and_the_invoice_that_paid(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/accounts/acct-acme/lots", headers=bearer(READER))
    closed = await client.get(
        "/v1/accounts/acct-acme/lots",
        params={"include_closed": "true"},
        headers=bearer(READER),
    )

    lots = response.json()["lots"]
    assert response.status_code == 200 and lots
    for lot in lots:
        assert Decimal(lot["remaining_quantity"]) > 0
        assert lot["invoice_id"].startswith("INV-")
        assert Decimal(lot["unit_cost"]) == Decimal(lot["amount"]) / Decimal(
            lot["quantity"]
        )
    assert len(closed.json()["lots"]) > len(lots)
    purchased = [lot["purchased_at"] for lot in closed.json()["lots"]]
    assert purchased == sorted(purchased)


async def test_history_pages_with_a_cursor_and_a_bounded_size(
    client: httpx.AsyncClient,
) -> None:
    seen: list[dict[str, Any]] = []
    cursor = 0
    pages = 0
    while cursor is not None:
        response = await client.get(
            "/v1/accounts/acct-acme/history",
            params={"cursor": cursor, "limit": 7},
            headers=bearer(READER),
        )
        page = response.json()
        assert len(page["entries"]) <= 7
        seen += page["entries"]
        cursor = page["next"]
        pages += 1
    too_big = await client.get(
        "/v1/accounts/acct-acme/history",
        params={"limit": 100_000},
        headers=bearer(READER),
    )

    assert pages > 2
    sequence = [entry["seq"] for entry in seen]
    assert sequence == sorted(set(sequence))
    assert too_big.status_code == 422
    assert too_big.headers["content-type"] == "application/problem+json"


async def test_reconciliation_is_the_same_as_the_cli_report(
    client: httpx.AsyncClient, demo_month_url: str
) -> None:
    engine = create_engine(Settings(), demo_month_url)
    async with engine.connect() as conn:
        expected = as_data(await reconcile_invoice(conn, "INV-2026-10-0001"))
    await engine.dispose()

    response = await client.get(
        "/v1/invoices/INV-2026-10-0001/reconciliation", headers=bearer(READER)
    )
    missing = await client.get(
        "/v1/invoices/INV-NONE/reconciliation", headers=bearer(READER)
    )

    assert response.status_code == 200
    assert response.json() == json.loads(json.dumps(expected, default=str))
    assert missing.status_code == 404
    assert missing.json()["title"] == "Not found"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/accounts/x'%20OR%201=1--/balance", 422),
        ("/v1/accounts/acct-acme/balance?as_of=yesterday", 422),
        ("/v1/accounts/acct-acme/balance?as_of=2026-11-01T00:00:00", 422),
        ("/v1/accounts/nobody/balance", 404),
        ("/v1/periods/2026-13/report", 422),
        ("/v1/accounts/acct-acme/history?cursor=-1", 422),
    ],
)
async def test_bad_parameters_are_problem_details(
    client: httpx.AsyncClient, path: str, status: int
) -> None:
    response = await client.get(path, headers=bearer(READER))

    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["detail"]
