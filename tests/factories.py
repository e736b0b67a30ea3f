"""Events and price lists for tests, built the way producers would send them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.events import Event, RawRecord, Rejection, decode
from ledger.prices import PriceList
from service.samples import cloud_event

DATA = Path(__file__).parent / "data"
SPEC = Path(__file__).parents[1] / "examples" / "focus-spec"
SOURCE = "//tests.focus-ledger/billing"
METER = "//tests.focus-ledger/meter"


def spec_prices(terms: str = "") -> PriceList:
    """The spec scenario's price list, with account terms appended (TOML)."""
    return PriceList.from_toml((SPEC / "prices.toml").read_text() + "\n" + terms)


def sample_prices() -> PriceList:
    return PriceList.from_toml(
        (Path(__file__).parents[1] / "examples" / "prices.toml").read_text()
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def envelope(
    event_id: str,
    event_type: str,
    time: str,
    account: str,
    data: dict[str, Any],
    source: str | None = None,
) -> dict[str, Any]:
    default = METER if event_type == "usage.recorded" else SOURCE
    document = cloud_event(
        event_id, event_type, at(time), account, data, source or default
    )
    document["time"] = time  # keep the test's own spelling of the time
    return document


def purchase_doc(
    event_id: str, time: str, account: str, quantity: str, amount: str, **data: Any
) -> dict[str, Any]:
    body = {
        "currency": "TKN",
        "quantity": quantity,
        "amount": amount,
        "billing_currency": "USD",
        "invoice_id": f"INV-{event_id}",
        **data,
    }
    return envelope(event_id, "credits.purchased", time, account, body)


def usage_doc(
    event_id: str, time: str, account: str, sku: str, quantity: str, **data: Any
) -> dict[str, Any]:
    return envelope(
        event_id,
        "usage.recorded",
        time,
        account,
        {"sku_id": sku, "quantity": quantity, **data},
    )


def refund_doc(
    event_id: str, time: str, account: str, purchase_id: str, amount: str, **data: Any
) -> dict[str, Any]:
    body = {
        "purchase_id": purchase_id,
        "amount": amount,
        "invoice_id": f"CN-{event_id}",
    }
    return envelope(event_id, "credits.refunded", time, account, {**body, **data})


def raw(document: dict[str, Any] | bytes, key: str | None = None) -> RawRecord:
    value = document if isinstance(document, bytes) else json.dumps(document).encode()
    return RawRecord(value=value, key=key.encode() if key else None)


def event(document: dict[str, Any], prices: PriceList | None = None) -> Event:
    decoded = decode(raw(document), prices or spec_prices())
    if isinstance(decoded, Rejection):
        raise AssertionError(f"test event rejected: {decoded}")
    return decoded
