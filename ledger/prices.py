"""The price list: what a credit costs, what each SKU costs in credits, and the
terms agreed with particular billing accounts.

A price list is loaded once at start from a TOML document. Its numbers are
decimal strings (TOML floats are refused, for the same reason as in events).

Two price levels exist, as in FOCUS: the *list* price (public) and the
*contracted* price (what a billing account agreed). For SKUs both are in
credits per pricing unit; a billing account may have contracted credit prices
for some SKUs, and pays list for the rest. For credits themselves the list
price is in national currency; the contracted national price of a credit is
not configured but known per lot, as what the account paid for it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ledger.currencies import is_iso_4217
from ledger.errors import PriceListError
from ledger.money import PRICE_PLACES, DecimalRangeError, parse_decimal

VIRTUAL_CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")
PRICING_UNIT = re.compile(r"^(?:(?P<size>[1-9][0-9]*) )?(?P<unit>[A-Za-z][A-Za-z -]*)$")


class DrawOrder(StrEnum):
    """Which lot a consumption draws from first."""

    FIFO = "fifo"
    EXPIRING_FIRST = "expiring-first"


class ShortfallPolicy(StrEnum):
    """What happens to usage that the balance cannot cover."""

    DEFICIT = "deficit"
    OVERAGE = "overage"


@dataclass(frozen=True, slots=True)
class VirtualCurrency:
    """A prepaid unit (credit, token) and its list price in national currency."""

    code: str
    name: str
    unit: str
    list_prices: dict[str, Decimal]
    sku_id: str
    sku_price_id: str
    service_name: str
    service_category: str
    service_subcategory: str
    sku_meter: str = ""


@dataclass(frozen=True, slots=True)
class Sku:
    """A metered product, priced in a virtual currency per pricing unit."""

    sku_id: str
    currency: str
    pricing_unit: str
    pricing_unit_size: Decimal
    list_price: Decimal
    consumed_unit: str
    service_name: str
    service_category: str
    service_subcategory: str
    sku_price_id: str
    sku_meter: str
    description: str
    resource_type: str | None = None
    price_details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AccountTerms:
    """What was agreed with one billing account (all optional)."""

    draw_order: DrawOrder = DrawOrder.FIFO
    shortfall: ShortfallPolicy = ShortfallPolicy.DEFICIT
    overage_unit_price: Decimal | None = None
    billing_currency: str | None = None
    timezone: str = "UTC"
    contracted: dict[str, Decimal] = field(default_factory=dict)


DEFAULT_TERMS = AccountTerms()


@dataclass(frozen=True, slots=True)
class PriceList:
    """The whole catalogue: provider, virtual currencies, SKUs, account terms."""

    provider: str
    currencies: dict[str, VirtualCurrency]
    skus: dict[str, Sku]
    accounts: dict[str, AccountTerms]
    regions: dict[str, str] = field(default_factory=dict)
    billing_account_type: str = "Billing Account"
    version: str = ""

    def terms(self, billing_account_id: str) -> AccountTerms:
        return self.accounts.get(billing_account_id, DEFAULT_TERMS)

    def contracted_price(self, billing_account_id: str, sku: Sku) -> Decimal:
        """Credits per pricing unit that this account pays for the SKU."""
        return self.terms(billing_account_id).contracted.get(sku.sku_id, sku.list_price)

    @classmethod
    def from_toml(cls, text: str) -> PriceList:
        """Parse and check a price list document.

        Raises:
            PriceListError: the document is not valid TOML or breaks a rule;
                the message names the offending key.
        """
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise PriceListError(f"price list is not valid TOML: {error}") from None
        return _parse_price_list(document)


def parse_pricing_unit(value: str) -> tuple[Decimal, str]:
    """Split "1000 Tokens" into (1000, "Tokens"); a bare unit has size 1."""
    match = PRICING_UNIT.match(value)
    if match is None:
        raise PriceListError(f"pricing unit {value!r} is not '[size ]Unit'")
    size = match.group("size")
    return (Decimal(size) if size else Decimal(1)), match.group("unit")


def _parse_price_list(document: dict[str, Any]) -> PriceList:
    provider = _text(document, "provider", "price list")
    currencies = {
        code: _parse_currency(code, _as_table(body, f"currencies.{code}"))
        for code, body in _table(document, "currencies", required=True).items()
    }
    if not currencies:
        raise PriceListError("price list defines no virtual currency")
    skus = {
        sku_id: _parse_sku(sku_id, _as_table(body, f"skus.{sku_id}"), currencies)
        for sku_id, body in _table(document, "skus", required=True).items()
    }
    accounts = {
        account_id: _parse_terms(account_id, _as_table(body, f"accounts.{account_id}"))
        for account_id, body in _table(document, "accounts").items()
    }
    for account_id, terms in accounts.items():
        for sku_id in terms.contracted:
            if sku_id not in skus:
                raise PriceListError(
                    f"accounts.{account_id}.contracted names unknown SKU {sku_id!r}"
                )
    regions = _table(document, "regions")
    if not all(isinstance(name, str) and name for name in regions.values()):
        raise PriceListError("regions maps region ids to display names")
    return PriceList(
        provider=provider,
        currencies=currencies,
        skus=skus,
        accounts=accounts,
        regions=dict(regions),
        billing_account_type=(
            _optional_text(document, "billing_account_type", "price list")
            or "Billing Account"
        ),
        version=str(document.get("version", "")),
    )


def _parse_currency(code: str, body: dict[str, Any]) -> VirtualCurrency:
    where = f"currencies.{code}"
    if not VIRTUAL_CURRENCY_CODE.match(code) or is_iso_4217(code):
        raise PriceListError(
            f"{where}: a virtual currency code is three capital letters that are "
            "not an ISO 4217 code"
        )
    list_prices = {
        national: _price({"price": value}, "price", f"{where}.list_prices.{national}")
        for national, value in _table(body, "list_prices", required=True).items()
    }
    if not list_prices or not all(map(is_iso_4217, list_prices)):
        raise PriceListError(
            f"{where}.list_prices maps ISO 4217 codes to the list price of one credit"
        )
    return VirtualCurrency(
        code=code,
        name=_text(body, "name", where),
        unit=_text(body, "unit", where),
        list_prices=list_prices,
        sku_id=_text(body, "sku_id", where),
        sku_price_id=_text(body, "sku_price_id", where),
        service_name=_text(body, "service_name", where),
        service_category=_text(body, "service_category", where),
        service_subcategory=_text(body, "service_subcategory", where),
        sku_meter=_optional_text(body, "sku_meter", where)
        or _text(body, "unit", where),
    )


def _parse_sku(
    sku_id: str, body: dict[str, Any], currencies: dict[str, VirtualCurrency]
) -> Sku:
    where = f"skus.{sku_id}"
    currency = _text(body, "currency", where)
    if currency not in currencies:
        raise PriceListError(f"{where}.currency {currency!r} is not a defined currency")
    pricing_unit = _text(body, "pricing_unit", where)
    size, _ = parse_pricing_unit(pricing_unit)
    details = _table(body, "price_details")
    for key, value in details.items():
        if not key.startswith("x_") or not isinstance(value, str):
            raise PriceListError(
                f"{where}.price_details: keys start with 'x_' and values are strings"
            )
    return Sku(
        sku_id=sku_id,
        currency=currency,
        pricing_unit=pricing_unit,
        pricing_unit_size=size,
        list_price=_price(body, "list_price", where),
        consumed_unit=_text(body, "consumed_unit", where),
        service_name=_text(body, "service_name", where),
        service_category=_text(body, "service_category", where),
        service_subcategory=_text(body, "service_subcategory", where),
        sku_price_id=_text(body, "sku_price_id", where),
        sku_meter=_text(body, "sku_meter", where),
        description=_text(body, "description", where),
        resource_type=_optional_text(body, "resource_type", where),
        price_details=dict(details),
    )


def _parse_terms(account_id: str, body: dict[str, Any]) -> AccountTerms:
    where = f"accounts.{account_id}"
    try:
        draw_order = DrawOrder(body.get("draw_order", DrawOrder.FIFO))
        shortfall = ShortfallPolicy(body.get("shortfall", ShortfallPolicy.DEFICIT))
    except ValueError as error:
        raise PriceListError(f"{where}: {error}") from None
    overage = (
        _price(body, "overage_unit_price", where)
        if "overage_unit_price" in body
        else None
    )
    billing_currency = body.get("billing_currency")
    if billing_currency is not None and not (
        isinstance(billing_currency, str) and is_iso_4217(billing_currency)
    ):
        raise PriceListError(f"{where}.billing_currency is not ISO 4217")
    if shortfall is ShortfallPolicy.OVERAGE and (
        overage is None or not billing_currency
    ):
        raise PriceListError(
            f"{where}: overage needs overage_unit_price and billing_currency"
        )
    timezone = body.get("timezone", "UTC")
    try:
        ZoneInfo(str(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        raise PriceListError(
            f"{where}.timezone {timezone!r} is not an IANA zone"
        ) from None
    contracted = {
        sku_id: _price({"price": value}, "price", f"{where}.contracted.{sku_id}")
        for sku_id, value in _table(body, "contracted").items()
    }
    return AccountTerms(
        draw_order=draw_order,
        shortfall=shortfall,
        overage_unit_price=overage,
        billing_currency=billing_currency,
        timezone=str(timezone),
        contracted=contracted,
    )


def _table(body: dict[str, Any], key: str, *, required: bool = False) -> dict[str, Any]:
    value = body.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise PriceListError(f"{key} must be a table")
    return value


def _as_table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PriceListError(f"{where} must be a table")
    return value


def _text(body: dict[str, Any], key: str, where: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PriceListError(f"{where}.{key} must be a non-empty string")
    return value


def _optional_text(body: dict[str, Any], key: str, where: str) -> str | None:
    return _text(body, key, where) if key in body else None


def _price(body: dict[str, Any], key: str, where: str) -> Decimal:
    value = body.get(key)
    if not isinstance(value, str):
        raise PriceListError(f'{where}.{key} must be a decimal string like "0.25"')
    try:
        number = parse_decimal(value, places_max=PRICE_PLACES, what=f"{where}.{key}")
    except DecimalRangeError as error:
        raise PriceListError(str(error)) from None
    if number < 0:
        raise PriceListError(f"{where}.{key} must not be negative")
    return number
